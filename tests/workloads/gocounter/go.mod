module gocounter
go 1.19

package main

import (
	"fmt"
	"sync/atomic"
	"time"
)

func main() {
	var n int64
	for i := 0; i < 4; i++ {
		go func() {
			for {
				atomic.AddInt64(&n, 1)
				time.Sleep(time.Millisecond)
			}
		}()
	}
	m := map[int]string{}
	for i := 0; ; i++ {
		m[i%100] = fmt.Sprint(i)
		fmt.Println("go", i, atomic.LoadInt64(&n) > 0, len(m))
		time.Sleep(200 * time.Millisecond)
	}
}

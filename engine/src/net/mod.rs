//! Sockets: unix and inet (TCP through TCP_REPAIR, UDP).

pub mod inet;
pub mod unix;

//! Black-box end-to-end tests over loopback.

mod e2e {
    pub mod cache;
    pub mod console;
    pub mod doors;
    pub mod efficiency;
    pub mod fixtures;
    pub mod flight;
    pub mod fuzz;
    pub mod pg;
    pub mod query;
    pub mod replicas;
    pub mod serve;
    pub mod upload;
}

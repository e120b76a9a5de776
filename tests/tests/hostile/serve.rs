//! A running `tracer serve` for the hostile tests, stopped on drop.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tracer_tests::{free_port, http_get, tracer_bin};

/// A running `tracer serve`, stopped on drop.
pub struct Serve {
    child: Child,
    pub addr: String,
}

impl Serve {
    pub fn start() -> Serve {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(tracer_bin())
            .args(["serve", "--listen", &addr])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tracer serve");
        let serve = Serve { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(&serve.addr, "/healthz").is_none_or(|(s, _)| s != 200) {
            assert!(Instant::now() < deadline, "tracer serve did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        serve
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn scrape(&self) -> String {
        http_get(&self.addr, "/metrics").expect("scrape").1
    }

    /// One sample's value (0 when absent).
    pub fn sample(&self, series: &str) -> u64 {
        self.total(series, " ")
    }

    /// The sum of the samples whose line starts with `series` followed by `next`.
    pub fn total(&self, series: &str, next: &str) -> u64 {
        let (_, text) = http_get(&self.addr, "/metrics").expect("scrape");
        text.lines()
            .filter_map(|l| l.strip_prefix(series)?.strip_prefix(next))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

//! The error-log lines of `transform_pool`'s processes, for the pool tests.

use std::time::Duration;

use super::{wait_until, Nginx};

/// Every error-log line of the module's pools.
pub fn all_pool_lines(nginx: &Nginx) -> Vec<String> {
    nginx
        .error_log()
        .lines()
        .filter(|l| l.contains("transform pool"))
        .map(String::from)
        .collect()
}

/// The number at the start of `s`.
pub fn leading_number(s: &str) -> Option<u64> {
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The pids of pool `name`'s `started process PID` lines, in order.
pub fn started(nginx: &Nginx, name: &str) -> Vec<u32> {
    let tag = format!("transform pool \"{name}\" started process ");
    nginx
        .error_log()
        .lines()
        .filter_map(|l| l.split_once(&tag))
        .filter_map(|(_, rest)| leading_number(rest))
        .map(|p| p as u32)
        .collect()
}

/// What follows `transform pool "NAME" process PID WHAT` in the first such line (up to nginx's
/// `, client: ...`).
pub fn pool_reason(nginx: &Nginx, name: &str, pid: u32, what: &str) -> Option<String> {
    let tag = format!("transform pool \"{name}\" process {pid} {what}");
    nginx.error_log().lines().find_map(|l| {
        l.split_once(&tag).map(|(_, rest)| {
            rest.split(", client: ")
                .next()
                .unwrap_or_default()
                .to_string()
        })
    })
}

/// Waits (up to 5 s) for an error-log line holding `text`; returns it.
#[track_caller]
pub fn wait_line(nginx: &Nginx, text: &str) -> String {
    let mut found = None;
    wait_until(Duration::from_secs(5), || {
        found = nginx
            .error_log()
            .lines()
            .find(|l| l.contains(text))
            .map(String::from);
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "no log line {text:?}; the pools' lines:\n{}",
            all_pool_lines(nginx).join("\n")
        )
    })
}

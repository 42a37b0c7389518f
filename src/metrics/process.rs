//! Process metrics read from `/proc/self` at scrape time (Linux; elsewhere they are simply absent):
//!
//! - `mqttlb_process_resident_memory_bytes`, `mqttlb_process_virtual_memory_bytes` (`/proc/self/status`)
//! - `mqttlb_process_cpu_seconds_total` (user + system, `/proc/self/stat`)
//! - `mqttlb_process_open_fds`, `mqttlb_process_max_fds` (`/proc/self/fd`, `/proc/self/limits`)
//! - `mqttlb_process_threads`, `mqttlb_process_start_time_seconds`
//!
//! A scrape reads four small files and one `stat()`, whatever the number of connections: since Linux 6.2 the size
//! of the `/proc/self/fd` directory is the number of open descriptors. Older kernels report 0 there, and then the
//! directory is listed (one `getdents` call per few hundred descriptors: a few milliseconds at 100k connections).

use std::path::Path;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Clock ticks per second of the times in `/proc/*/stat` (`USER_HZ`): 100 on every Linux architecture Rust targets.
const USER_HZ: f64 = 100.0;

/// Reads the process's figures on each scrape.
#[derive(Debug)]
pub(crate) struct ProcessCollector {
    /// Unix time at which the process started, read once.
    start_time: Option<f64>,
}

impl ProcessCollector {
    pub(crate) fn new() -> ProcessCollector {
        // Without /proc/stat (hidden by systemd's ProcSubset=pid, say): now, as the registry is made at start.
        let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs_f64());
        ProcessCollector { start_time: start_time().or_else(now) }
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = std::fs::read_to_string("/proc/self/status").ok();
        let status = status.as_deref().unwrap_or_default();
        let stat = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| StatFields::parse(&s));
        let gauges: [(&str, &str, Option<Unit>, Option<f64>); 6] = [
            (
                "process_resident_memory",
                "Resident memory size of the process",
                Some(Unit::Bytes),
                status_kib(status, "VmRSS:").map(|k| k * 1024.0),
            ),
            (
                "process_virtual_memory",
                "Virtual memory size of the process",
                Some(Unit::Bytes),
                status_kib(status, "VmSize:").map(|k| k * 1024.0),
            ),
            (
                "process_open_fds",
                "Open file descriptors (sockets included)",
                None,
                open_fds(Path::new("/proc/self/fd")),
            ),
            (
                "process_max_fds",
                "Soft limit on open file descriptors (RLIMIT_NOFILE)",
                None,
                std::fs::read_to_string("/proc/self/limits").ok().and_then(|l| max_open_files(&l)),
            ),
            ("process_threads", "Threads of the process", None, stat.as_ref().map(|s| s.threads)),
            (
                "process_start_time",
                "Start time of the process since the Unix epoch",
                Some(Unit::Seconds),
                self.start_time,
            ),
        ];
        for (name, help, unit, value) in gauges {
            if let Some(v) = value {
                let g = ConstGauge::new(v);
                g.encode(encoder.encode_descriptor(name, help, unit.as_ref(), g.metric_type())?)?;
            }
        }
        if let Some(s) = &stat {
            let c = ConstCounter::new(s.cpu_seconds);
            c.encode(encoder.encode_descriptor(
                "process_cpu",
                "User and system CPU time spent by the process",
                Some(&Unit::Seconds),
                c.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// The fields of `/proc/self/stat` used here.
#[derive(Debug, PartialEq)]
struct StatFields {
    cpu_seconds: f64,
    threads: f64,
    /// Clock ticks after boot at which the process started.
    start_ticks: f64,
}

impl StatFields {
    /// `pid (comm) state ppid ...`: `comm` may hold spaces and parentheses, so fields are counted after the last `)`.
    fn parse(stat: &str) -> Option<StatFields> {
        let (_, rest) = stat.rsplit_once(')')?;
        // After `)`: field 3 (state) is index 0, so field N is index N - 3.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let num = |field: usize| -> Option<f64> { fields.get(field.checked_sub(3)?)?.parse::<f64>().ok() };
        Some(StatFields { cpu_seconds: (num(14)? + num(15)?) / USER_HZ, threads: num(20)?, start_ticks: num(22)? })
    }
}

/// A `Key:   1234 kB` line of `/proc/self/status`, in KiB.
fn status_kib(status: &str, key: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.get(key.len()..)?.split_whitespace().next()?.parse().ok()
}

/// The soft limit of the `Max open files` line of `/proc/self/limits` (None when `unlimited`).
fn max_open_files(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.get("Max open files".len()..)?.split_whitespace().next()?.parse().ok()
}

/// Open descriptors: the size of the fd directory (Linux 6.2+), else its entries counted.
fn open_fds(dir: &Path) -> Option<f64> {
    let size = std::fs::metadata(dir).ok()?.len();
    if size > 0 {
        return Some(size as f64);
    }
    Some(std::fs::read_dir(dir).ok()?.count() as f64)
}

/// The process's start as a Unix time: boot time (`btime` of `/proc/stat`) plus the start in clock ticks.
fn start_time() -> Option<f64> {
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: f64 = boot.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
    let stat = StatFields::parse(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    Some(btime + stat.start_ticks / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with spaces and a parenthesis, as a process may call itself.
        let stat = "4242 (mqtt (lb) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 130 0 0 20 0 7 0 123456 \
                    50331648 2048 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        let s = StatFields::parse(stat).unwrap();
        assert_eq!(s, StatFields { cpu_seconds: 3.8, threads: 7.0, start_ticks: 123456.0 });
        assert_eq!(StatFields::parse("4242 (x) S 1 2"), None);
        assert_eq!(StatFields::parse(""), None);
    }

    #[test]
    fn status_and_limits_lines() {
        let status = "Name:\tmqtt-lb\nVmSize:\t  123456 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(2048.0));
        assert_eq!(status_kib(status, "VmSize:"), Some(123456.0));
        assert_eq!(status_kib(status, "VmSwap:"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1048576              1048576              files     \n";
        assert_eq!(max_open_files(limits), Some(1048576.0));
        assert_eq!(max_open_files("Max open files            unlimited            unlimited            files\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_collector_reports_this_process() {
        let mut registry = prometheus_client::registry::Registry::with_prefix("mqttlb");
        registry.register_collector(Box::new(ProcessCollector::new()));
        let files: Vec<std::fs::File> = (0..20).map(|_| std::fs::File::open("/proc/self/status").unwrap()).collect();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let value = |name: &str| -> f64 {
            let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(value("mqttlb_process_resident_memory_bytes") > 1e6, "{text}");
        assert!(value("mqttlb_process_virtual_memory_bytes") >= value("mqttlb_process_resident_memory_bytes"));
        assert!(value("mqttlb_process_open_fds") >= 20.0, "{text}");
        assert!(value("mqttlb_process_max_fds") >= value("mqttlb_process_open_fds"));
        assert!(value("mqttlb_process_threads") >= 1.0);
        assert!(value("mqttlb_process_cpu_seconds_total") >= 0.0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let started = value("mqttlb_process_start_time_seconds");
        assert!(started <= now + 1.0 && started > now - 24.0 * 3600.0, "start {started}, now {now}");
        assert!(text.contains("# TYPE mqttlb_process_cpu_seconds counter"), "{text}");
        drop(files);
    }
}

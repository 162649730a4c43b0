//! A shard's stall detector, in the spirit of Seastar's reactor-stall warnings. The shard's expiry
//! timer is due every `EXPIRY_TICK`; when it comes more than `STALL_WARN` late, something kept
//! the event loop from running: a task that did not yield, the thread waiting for a CPU (another
//! process on the same core, or the hypervisor), or a call that blocked the thread. The thread's
//! own scheduler statistics (`/proc/thread-self/schedstat`: nanoseconds on a CPU, nanoseconds
//! runnable but waiting for one) tell these apart, so the warning says which it was. A stall is
//! counted in the metrics always and logged at most once per `STALL_LOG_PERIOD`.

use super::EXPIRY_TICK;
use crate::log::Throttle;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// How late the expiry timer may fire before it counts as a stall.
pub const STALL_WARN: Duration = Duration::from_millis(100);
/// At most one stall warning per shard per period (the rest are counted in it).
pub const STALL_LOG_PERIOD: Duration = Duration::from_secs(10);

/// A thread's cumulative scheduler times, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedStat {
    pub run_ns: u64,
    pub wait_ns: u64,
}

impl SchedStat {
    /// Parses `schedstat`'s text: "<run ns> <wait ns> <timeslices>\n".
    pub fn parse(text: &[u8]) -> Option<SchedStat> {
        let text = std::str::from_utf8(text).ok()?;
        let mut fields = text.split_ascii_whitespace().map(str::parse::<u64>);
        let run_ns = fields.next()?.ok()?;
        let wait_ns = fields.next()?.ok()?;
        Some(SchedStat { run_ns, wait_ns })
    }
}

/// Reads the calling thread's schedstat through a file opened once, on that thread.
pub struct SchedReader {
    file: Option<File>,
    opened: bool,
}

impl Default for SchedReader {
    fn default() -> SchedReader {
        SchedReader::new()
    }
}

impl SchedReader {
    pub const fn new() -> SchedReader {
        SchedReader { file: None, opened: false }
    }

    /// The thread's times now, or None where the kernel does not report them. The first call
    /// opens the file, so it must come from the thread to be watched.
    pub fn read(&mut self) -> Option<SchedStat> {
        if !self.opened {
            self.opened = true;
            self.file = File::open("/proc/thread-self/schedstat").ok();
        }
        let mut buf = [0u8; 96];
        let n = self.file.as_ref()?.read_at(&mut buf, 0).ok()?;
        SchedStat::parse(buf.get(..n)?)
    }
}

/// One stall: how long the timer took, and where that time went when the kernel says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stall {
    pub elapsed_ms: u64,
    pub late_ms: u64,
    /// Of `elapsed_ms`: on a CPU, and runnable but waiting for one (None without schedstat).
    pub split: Option<(u64, u64)>,
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "its {} ms timer fired after {} ms ({} ms late)",
            EXPIRY_TICK.as_millis(),
            self.elapsed_ms,
            self.late_ms
        )?;
        let Some((run, wait)) = self.split else { return Ok(()) };
        let other = self.elapsed_ms.saturating_sub(run + wait);
        let cause = if run >= wait && run >= other {
            "its own work did not yield"
        } else if wait >= other {
            "the thread waited for a CPU: another busy thread on its core, or the hypervisor"
        } else {
            "the thread was neither running nor waiting for a CPU: blocked (a blocking call, a page fault \
             from disk, a stopped process) or its time stolen by the hypervisor"
        };
        write!(f, ": {run} ms running, {wait} ms waiting for a CPU, {other} ms neither; {cause}")
    }
}

/// The detector's state: the last tick, the counts the metrics report.
pub struct Watch {
    last: Option<(u64, Option<SchedStat>)>,
    pub stalls: u64,
    pub worst_late_ms: u64,
    throttle: Throttle,
}

impl Default for Watch {
    fn default() -> Watch {
        Watch::new()
    }
}

impl Watch {
    pub const fn new() -> Watch {
        Watch { last: None, stalls: 0, worst_late_ms: 0, throttle: Throttle::new(STALL_LOG_PERIOD) }
    }

    /// The expiry timer fired at `now_ms` (the shard's clock) with the thread's times `sched`:
    /// a stall when it came more than `STALL_WARN` after the previous tick plus `EXPIRY_TICK`.
    pub fn tick(&mut self, now_ms: u64, sched: Option<SchedStat>) -> Option<Stall> {
        let (prev_ms, prev_sched) = self.last.replace((now_ms, sched))?;
        let elapsed_ms = now_ms.saturating_sub(prev_ms);
        let late_ms = elapsed_ms.saturating_sub(EXPIRY_TICK.as_millis() as u64);
        if late_ms <= STALL_WARN.as_millis() as u64 {
            return None;
        }
        self.stalls += 1;
        self.worst_late_ms = self.worst_late_ms.max(late_ms);
        let split = match (prev_sched, sched) {
            (Some(a), Some(b)) => {
                Some((b.run_ns.saturating_sub(a.run_ns) / 1_000_000, b.wait_ns.saturating_sub(a.wait_ns) / 1_000_000))
            }
            _ => None,
        };
        Some(Stall { elapsed_ms, late_ms, split })
    }

    /// Whether a stall seen at `now` is to be logged: `Some` with the end of the message (the
    /// stalls not logged since the last warning, if any; `Throttle::note`).
    pub fn should_log(&mut self, now: Instant) -> Option<String> {
        self.throttle.note(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_parses_the_kernels_line_and_refuses_anything_else() {
        assert_eq!(SchedStat::parse(b"123 456 7\n"), Some(SchedStat { run_ns: 123, wait_ns: 456 }));
        assert_eq!(SchedStat::parse(b"123\n"), None);
        assert_eq!(SchedStat::parse(b"x 1 2\n"), None);
        assert_eq!(SchedStat::parse(b""), None);
        assert_eq!(SchedStat::parse(&[0xff, b' ', b'1']), None);
    }

    #[test]
    fn this_threads_schedstat_reads_and_grows_while_it_runs() {
        let mut r = SchedReader::new();
        let Some(a) = r.read() else { return }; // a kernel without schedstat: nothing to check
        let t0 = Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let b = r.read().expect("read once, reads again");
        assert!(b.run_ns > a.run_ns, "{a:?} {b:?}");
    }

    #[test]
    fn a_late_tick_is_a_stall_with_its_split_and_an_on_time_one_is_not() {
        let ms = |m: u64| m * 1_000_000;
        let tick = EXPIRY_TICK.as_millis() as u64;
        let mut w = Watch::new();
        assert_eq!(w.tick(1000, Some(SchedStat { run_ns: 0, wait_ns: 0 })), None, "the first tick only starts");
        assert_eq!(
            w.tick(1000 + tick + 100, Some(SchedStat { run_ns: ms(1), wait_ns: 0 })),
            None,
            "100 ms late is not yet a stall"
        );
        let t2 = 1000 + tick + 100;
        let t3 = t2 + tick + 700;
        let s = w.tick(t3, Some(SchedStat { run_ns: ms(51), wait_ns: ms(600) })).expect("700 ms late");
        assert_eq!(s, Stall { elapsed_ms: tick + 700, late_ms: 700, split: Some((50, 600)) });
        let text = s.to_string();
        assert!(
            text.contains("50 ms running, 600 ms waiting for a CPU, 250 ms neither")
                && text.contains("waited for a CPU"),
            "{text}"
        );
        assert_eq!((w.stalls, w.worst_late_ms), (1, 700));
        let s = w.tick(t3 + tick + 300, None).expect("300 ms late");
        assert_eq!(s.split, None, "no split without the kernel's times");
        assert!(!s.to_string().contains("running"), "{s}");
        assert_eq!((w.stalls, w.worst_late_ms), (2, 700));
    }

    #[test]
    fn a_stall_names_its_largest_part() {
        let text = |split| Stall { elapsed_ms: 1000, late_ms: 800, split: Some(split) }.to_string();
        assert!(text((900, 50)).contains("did not yield"));
        assert!(text((50, 900)).contains("waited for a CPU"));
        assert!(text((50, 50)).contains("a blocking call"));
    }

    #[test]
    fn stalls_are_logged_once_per_period() {
        let mut w = Watch::new();
        let t0 = Instant::now();
        assert_eq!(w.should_log(t0).as_deref(), Some(""));
        assert_eq!(w.should_log(t0 + Duration::from_secs(1)), None);
        assert_eq!(w.should_log(t0 + STALL_LOG_PERIOD).as_deref(), Some(" (1 more since the last)"));
    }
}

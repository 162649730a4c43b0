//! `seqcore tune`: checks the machine for a thread-per-core server and fixes what it safely can,
//! in the manner of Redpanda's `rpk redpanda tune` and Seastar's perftune.py.
//!
//! `check` reads every setting into a [`Setting`] row (current value, recommendation, whether it
//! matters for these shard CPUs, why); `--dry-run` prints the fixes as a sh script; plain `tune`
//! applies the run-time ones (sysfs/procfs writes, only as root), prints each change before and
//! after, then checks again and says what still needs a kernel command line, a reboot or an admin.
//!
//! Every reader takes a root directory (`/` on a real machine), so the unit tests run the same code
//! over a fake `/proc` and `/sys` in a temp dir. A knob the machine lacks (a VM, a container, an
//! older kernel) is "not available here", never an error. See tuning/README.md.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::config::parse_cpuset;

/// Every setting that matters is at its recommendation (`check`), or was brought there (`tune`).
pub const EXIT_OK: i32 = 0;
/// `tune`: something recommended could not be applied (a kernel command line, root, a write).
pub const EXIT_NOT_APPLIED: i32 = 1;
/// `check`: some setting that matters here is off its recommendation.
pub const EXIT_OFF: i32 = 2;
/// A bad command line (EX_USAGE, as the server's).
pub const EXIT_USAGE: i32 = crate::config::EXIT_USAGE;

/// glommio's listen(2) backlog for a `TcpListener` (glommio 0.9); the kernel caps it at somaxconn.
const GLOMMIO_BACKLOG: u64 = 1024;
/// glommio refuses to make an executor when RLIMIT_MEMLOCK is below this (glommio 0.9).
const GLOMMIO_MEMLOCK_MIN: u64 = 512 << 10;
/// What one executor registers with io_uring: its 10 MiB I/O buffer, in each of its 3 rings.
const GLOMMIO_MEMLOCK_PER_SHARD: u64 = 3 * (10 << 20);
/// C-states slower than this to exit (µs) are kept off shard CPUs.
const CSTATE_EXIT_MAX_US: u64 = 10;
/// What `tune` writes to somaxconn and tcp_max_syn_backlog when they are below the backlog.
const BACKLOG_WRITE: &str = "4096";
/// Capability bit of CAP_IPC_LOCK: io_uring does not charge such a process's locked memory.
const CAP_IPC_LOCK: u32 = 14;
/// Clocksources that `clock_gettime` reads in user space (vDSO), without a system call.
const FAST_CLOCKSOURCES: &[&str] = &["tsc", "kvm-clock", "arch_sys_counter", "hyperv_clocksource_tsc_page"];

pub const HELP: &str = "\
usage: seqcore tune check [--cpuset LIST | --cores N] [--json] [--root DIR]
       seqcore tune [--dry-run] [--cpuset LIST | --cores N] [--root DIR]

Checks the machine for a thread-per-core server (CPU frequency, C-states, huge pages, NUMA
balancing, swap, IRQs, RPS/XPS, isolated CPUs, listen backlog, locked memory, io_uring,
clocksource) for the shard CPUs seqcore would run on. See tuning/README.md.

  check            print one row per setting: current value, recommended value, whether it
                   matters for these shard CPUs, and why; changes nothing
  (no subcommand)  apply what can be changed at run time (sysfs/procfs writes, as root only),
                   printing every change before and after; then say what still needs a kernel
                   command line, a reboot or an admin. Writes last until the next reboot.
  --dry-run        print what `seqcore tune` would run, as a sh script; changes nothing
  --json           (check) print the rows as JSON
  --cpuset LIST    the shard CPUs, as the server's --cpuset (e.g. 1-3); must be online
  --cores N        the first N of those CPUs, as the server's --cores
                   (default: every CPU in this process's affinity mask)
  --root DIR       read (and write) DIR/proc and DIR/sys instead of /proc and /sys (tests)

A CPU that is not a shard is a housekeeping CPU: NIC IRQs, RPS and the kernel's own work go
there, and isolcpus/nohz_full/rcu_nocbs matter, only when there is one. With isolcpus in force,
give --cpuset: isolated CPUs are not in a new process's affinity mask.

Exit codes:
  0   check: every setting that matters is at its recommendation (or not available here);
      tune: nothing to change, or every change applied; --dry-run: the script was printed
  1   tune: something recommended could not be applied (needs root, a kernel command line
      and a reboot, an admin, or the write failed)
  2   check: some setting that matters is off its recommendation
  64  bad command line
";

/// One run-time write of `value` to a sysfs/procfs file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileWrite {
    pub path: PathBuf,
    pub value: String,
}

/// How a setting reaches its recommendation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fix {
    /// Run-time writes (sysfs/procfs); they last until the next reboot.
    Write(Vec<FileWrite>),
    /// Not a run-time file: a kernel command line parameter and a reboot, a service, a limit.
    Note(String),
}

/// One row of `seqcore tune check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub name: &'static str,
    /// None: not available here (no such knob on this machine).
    pub current: Option<String>,
    pub recommended: String,
    /// Whether `current` is at the recommendation (meaningful only when it is known).
    pub ok: bool,
    /// Whether the setting matters for this deployment (its shard CPUs, NUMA nodes, swap...).
    pub matters: bool,
    pub why: String,
    /// How to reach the recommendation; None when it is reached or there is nothing to do.
    pub fix: Option<Fix>,
}

impl Setting {
    /// Off its recommendation where it matters: what `check` counts and `tune` fixes.
    pub fn off(&self) -> bool {
        self.current.is_some() && self.matters && !self.ok
    }

    pub fn status(&self) -> &'static str {
        match (&self.current, self.ok) {
            (None, _) => "n/a",
            (Some(_), true) => "ok",
            (Some(_), false) => "off",
        }
    }
}

/// A row whose fix is `writes`: at its recommendation exactly when there is nothing to write.
fn by_writes(
    name: &'static str,
    current: String,
    recommended: impl Into<String>,
    matters: bool,
    why: impl Into<String>,
    writes: Vec<FileWrite>,
) -> Setting {
    let ok = writes.is_empty();
    Setting {
        name,
        current: Some(current),
        recommended: recommended.into(),
        ok,
        matters,
        why: why.into(),
        fix: (!ok).then_some(Fix::Write(writes)),
    }
}

/// A row for a knob this machine does not have.
fn na(name: &'static str, recommended: impl Into<String>, matters: bool, why: impl Into<String>) -> Setting {
    Setting { name, current: None, recommended: recommended.into(), ok: true, matters, why: why.into(), fix: None }
}

/// The machine as `tune` sees it: where to read, and the shard CPUs to judge it for.
#[derive(Clone, Debug)]
pub struct Host {
    pub root: PathBuf,
    pub shards: Vec<usize>,
    /// Where `shards` came from (for the report).
    pub shards_from: &'static str,
    pub online: Vec<usize>,
    /// Whether a glommio executor (its io_uring rings) starts here; None: not probed.
    pub io_uring: Option<Result<(), String>>,
}

impl Host {
    /// The shard CPUs as the server chooses them: `cpuset` (checked against the online CPUs) or
    /// the process's affinity mask (`Cpus_allowed_list` of `proc/self/status`), cut to `cores`.
    pub fn new(root: &Path, cpuset: Option<&[usize]>, cores: Option<usize>) -> Result<Host, String> {
        let online = read_trimmed(&root.join("sys/devices/system/cpu/online")).and_then(|s| cpu_list(&s));
        let allowed = status_field(root, "Cpus_allowed_list").and_then(|s| cpu_list(&s)).filter(|a| !a.is_empty());
        let (mut shards, shards_from) = match (cpuset, &allowed, &online) {
            (Some(set), _, on) => {
                if let Some(c) = on.as_ref().and_then(|on| set.iter().find(|c| !on.contains(c))) {
                    let on = on.as_deref().unwrap_or(&[]);
                    return Err(format!("--cpuset: CPU {c} is not online here (online: {})", fmt_cpus(on)));
                }
                (set.to_vec(), "--cpuset")
            }
            (None, Some(a), _) => (a.clone(), "this process's affinity mask"),
            (None, None, Some(on)) => (on.clone(), "the online CPUs"),
            (None, None, None) => (Vec::new(), "unknown here"),
        };
        if let Some(n) = cores {
            if n == 0 || n > shards.len() {
                return Err(format!(
                    "--cores {n}: {} CPU(s) to choose from ({}); one shard per core",
                    shards.len(),
                    fmt_cpus(&shards)
                ));
            }
            shards.truncate(n);
        }
        let online = online.or(allowed).unwrap_or_else(|| shards.clone());
        Ok(Host { root: root.to_path_buf(), shards, shards_from, online, io_uring: None })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn read(&self, rel: &str) -> Option<String> {
        read_trimmed(&self.path(rel))
    }

    /// Online CPUs that are not shards: where IRQs and the kernel's own work should go.
    pub fn housekeeping(&self) -> Vec<usize> {
        self.online.iter().copied().filter(|c| !self.shards.contains(c)).collect()
    }

    /// Shards on dedicated cores, with at least one housekeeping CPU beside them.
    fn dedicated(&self) -> bool {
        !self.shards.is_empty() && !self.housekeeping().is_empty()
    }

    /// Whether `cpus` holds every shard CPU.
    fn covers_shards(&self, cpus: &[usize]) -> bool {
        self.shards.iter().all(|c| cpus.contains(c))
    }

    /// The kernel command line's parameters (before `--`); None without `proc/cmdline`.
    fn cmdline(&self) -> Option<Vec<(String, Option<String>)>> {
        let text = self.read("proc/cmdline")?;
        let params = text
            .split_whitespace()
            .take_while(|w| *w != "--")
            .map(|w| match w.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (w.to_string(), None),
            })
            .collect();
        Some(params)
    }
}

/// Every setting, in the order `check` prints them.
pub fn check(h: &Host) -> Vec<Setting> {
    vec![
        governor(h),
        boost(h),
        cstates(h),
        smt(h),
        thp(h),
        thp_defrag(h),
        numa_balancing(h),
        swappiness(h),
        irqbalance(h),
        irq_affinity(h),
        rps(h),
        xps(h),
        isolcpus(h),
        nohz_full(h),
        rcu_nocbs(h),
        somaxconn(h),
        listen_backlog(h),
        syn_backlog(h),
        memlock(h),
        io_uring_disabled(h),
        io_uring_setup(h),
        clocksource(h),
    ]
}

// ---------------------------------------------------------------------------------------------
// CPU
// ---------------------------------------------------------------------------------------------

fn governor(h: &Host) -> Setting {
    let name = "cpu.governor";
    let why = "a shard's core should be at full speed when a request comes, not ramp up after it";
    let mut seen = Vec::new();
    let mut writes = Vec::new();
    let mut lacking = Vec::new();
    for &c in &h.shards {
        let rel = format!("sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor");
        let Some(g) = h.read(&rel) else { continue };
        if g != "performance" {
            let avail = h.read(&format!("sys/devices/system/cpu/cpu{c}/cpufreq/scaling_available_governors"));
            if avail.unwrap_or_default().split_whitespace().any(|a| a == "performance") {
                writes.push(FileWrite { path: h.path(&rel), value: "performance".into() });
            } else {
                lacking.push(c);
            }
        }
        seen.push((c, g));
    }
    if seen.is_empty() {
        return na(name, "performance", true, "no cpufreq on the shard CPUs (in a VM the host sets the frequency)");
    }
    let ok = writes.is_empty() && lacking.is_empty();
    let fix = if !lacking.is_empty() {
        Some(Fix::Note(format!(
            "the cpufreq driver offers no performance governor on CPU {}: build or load cpufreq_performance, \
             or boot with another cpufreq driver",
            fmt_cpus(&lacking)
        )))
    } else {
        (!writes.is_empty()).then_some(Fix::Write(writes))
    };
    Setting {
        name,
        current: Some(grouped(&seen, |cpus| format!("CPU {}", fmt_cpus(cpus)))),
        recommended: "performance".into(),
        ok,
        matters: true,
        why: why.into(),
        fix,
    }
}

fn boost(h: &Host) -> Setting {
    let name = "cpu.boost";
    let why = "turbo raises a busy core's clock, and a shard runs at one core's speed";
    const INTEL: &str = "sys/devices/system/cpu/intel_pstate/no_turbo";
    const CPUFREQ: &str = "sys/devices/system/cpu/cpufreq/boost";
    let (rel, on) = if h.read(INTEL).is_some() { (INTEL, "0") } else { (CPUFREQ, "1") };
    let Some(v) = h.read(rel) else { return na(name, "on", true, why) };
    let ok = v == on;
    Setting {
        name,
        current: Some(if ok { "on".into() } else { "off".into() }),
        recommended: "on".into(),
        ok,
        matters: true,
        why: why.into(),
        fix: (!ok).then(|| Fix::Write(vec![FileWrite { path: h.path(rel), value: on.into() }])),
    }
}

fn cstates(h: &Host) -> Setting {
    let name = "cpu.cstates";
    let rec = format!("none slower than {CSTATE_EXIT_MAX_US} µs to exit on shard CPUs");
    let why = "a shard woken from a deep C-state adds its exit latency to the request that woke it";
    let driver = h.read("sys/devices/system/cpu/cpuidle/current_driver");
    let mut any = false;
    let mut deepest: Option<(String, u64)> = None;
    let mut writes = Vec::new();
    for &c in &h.shards {
        for dir in sorted_dir(&h.path(&format!("sys/devices/system/cpu/cpu{c}/cpuidle"))) {
            if !file_name(&dir).starts_with("state") {
                continue;
            }
            any = true;
            let state = read_trimmed(&dir.join("name")).unwrap_or_else(|| file_name(&dir));
            let exit_us = read_trimmed(&dir.join("latency")).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            if read_trimmed(&dir.join("disable")).is_some_and(|d| d != "0") {
                continue;
            }
            if deepest.as_ref().is_none_or(|(_, l)| exit_us > *l) {
                deepest = Some((state, exit_us));
            }
            if exit_us > CSTATE_EXIT_MAX_US {
                writes.push(FileWrite { path: dir.join("disable"), value: "1".into() });
            }
        }
    }
    let driver_name = driver.clone().unwrap_or_else(|| "none".into());
    if !any {
        if driver.is_none() {
            return na(name, rec, true, why);
        }
        return Setting {
            name,
            current: Some(format!("no idle states (cpuidle driver {driver_name})")),
            recommended: rec,
            ok: true,
            matters: false,
            why: "the kernel has no C-states to choose from here (in a VM the host does)".into(),
            fix: None,
        };
    }
    let current = match &deepest {
        Some((s, l)) => format!("{driver_name}, deepest enabled {s} ({l} µs)"),
        None => format!("{driver_name}, every state disabled"),
    };
    by_writes(name, current, rec, true, why, writes)
}

fn smt(h: &Host) -> Setting {
    let name = "cpu.smt_siblings";
    let rec = "no two shards on one physical core";
    let why = "hyper-threads of one core share its execution units: two shards there halve each other";
    let mut pairs = Vec::new();
    let mut any = false;
    let mut one_per_core: Vec<usize> = Vec::new();
    for &c in &h.shards {
        let Some(sib) = h.read(&format!("sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list")) else {
            continue;
        };
        any = true;
        let sib = cpu_list(&sib).unwrap_or_default();
        if !one_per_core.iter().any(|k| sib.contains(k)) {
            one_per_core.push(c);
        }
        for &o in sib.iter().filter(|&&o| o > c && h.shards.contains(&o)) {
            pairs.push(format!("{c}+{o}"));
        }
    }
    if !any {
        return na(name, rec, h.shards.len() > 1, why);
    }
    let ok = pairs.is_empty();
    Setting {
        name,
        current: Some(if ok { "none".into() } else { format!("shards share cores: {}", pairs.join(", ")) }),
        recommended: rec.into(),
        ok,
        matters: h.shards.len() > 1,
        why: why.into(),
        fix: (!ok).then(|| {
            Fix::Note(format!("start seqcore on one CPU per physical core, e.g. --cpuset {}", fmt_cpus(&one_per_core)))
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------

fn thp(h: &Host) -> Setting {
    let name = "mm.transparent_hugepage";
    let why =
        "with always, page faults and khugepaged compact memory under the shard and small allocations bloat to 2 MiB";
    bracketed_setting(h, name, "sys/kernel/mm/transparent_hugepage/enabled", &["madvise", "never"], why)
}

fn thp_defrag(h: &Host) -> Setting {
    let name = "mm.transparent_hugepage.defrag";
    let why = "with always, a page fault may stall the shard in direct compaction";
    let ok = &["madvise", "defer", "defer+madvise", "never"];
    bracketed_setting(h, name, "sys/kernel/mm/transparent_hugepage/defrag", ok, why)
}

/// A file like `always [madvise] never`: ok when the selected word is in `ok`; the fix selects
/// `ok[0]`.
fn bracketed_setting(h: &Host, name: &'static str, rel: &str, ok: &[&str], why: &str) -> Setting {
    let rec = ok.first().copied().unwrap_or_default();
    let Some(text) = h.read(rel) else { return na(name, rec, true, why) };
    let options: Vec<&str> = text.split_whitespace().map(|w| w.trim_matches(|c| c == '[' || c == ']')).collect();
    let selected =
        text.split_whitespace().find(|w| w.starts_with('[')).map(|w| w.trim_matches(|c| c == '[' || c == ']'));
    let Some(selected) = selected else { return na(name, rec, true, why) };
    let is_ok = ok.contains(&selected);
    let fix = (!is_ok).then(|| {
        if options.contains(&rec) {
            Fix::Write(vec![FileWrite { path: h.path(rel), value: rec.into() }])
        } else {
            Fix::Note(format!("this kernel offers only {}", options.join(", ")))
        }
    });
    Setting {
        name,
        current: Some(selected.into()),
        recommended: rec.into(),
        ok: is_ok,
        matters: true,
        why: why.into(),
        fix,
    }
}

fn numa_balancing(h: &Host) -> Setting {
    let name = "kernel.numa_balancing";
    const REL: &str = "proc/sys/kernel/numa_balancing";
    let nodes = sorted_dir(&h.path("sys/devices/system/node"))
        .iter()
        .filter(|p| {
            file_name(p).strip_prefix("node").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .count()
        .max(1);
    let matters = nodes > 1;
    let why = if matters {
        format!("{nodes} NUMA nodes: shards already allocate on their own node; balancing unmaps pages to sample them (faults on the shard)")
    } else {
        "one NUMA node: nothing to balance".to_string()
    };
    let Some(v) = h.read(REL) else { return na(name, "0", matters, why) };
    let ok = v == "0";
    Setting {
        name,
        current: Some(v),
        recommended: "0".into(),
        ok,
        matters,
        why,
        fix: (!ok).then(|| Fix::Write(vec![FileWrite { path: h.path(REL), value: "0".into() }])),
    }
}

fn swappiness(h: &Host) -> Setting {
    let name = "vm.swappiness";
    const REL: &str = "proc/sys/vm/swappiness";
    // No /proc/swaps: unknown, so assume swap may be there.
    let swap = h.read("proc/swaps").is_none_or(|s| s.lines().count() > 1);
    let why = if swap {
        "a sequence's state or a model's weights swapped out stalls its shard for milliseconds on the next step"
    } else {
        "no swap is active; matters once swap is added"
    };
    let Some(v) = h.read(REL) else { return na(name, "1", swap, why) };
    let ok = v.parse::<u64>().is_ok_and(|n| n <= 1);
    Setting {
        name,
        current: Some(v),
        recommended: "1".into(),
        ok,
        matters: swap,
        why: why.into(),
        fix: (!ok).then(|| Fix::Write(vec![FileWrite { path: h.path(REL), value: "1".into() }])),
    }
}

// ---------------------------------------------------------------------------------------------
// IRQs and the network stack
// ---------------------------------------------------------------------------------------------

fn irqbalance(h: &Host) -> Setting {
    let name = "irqbalance";
    let dedicated = h.dedicated();
    let shards = fmt_cpus(&h.shards);
    let rec = if dedicated {
        format!("stopped, or IRQBALANCE_BANNED_CPULIST={shards}")
    } else {
        "either (every CPU is a shard)".to_string()
    };
    let why = if dedicated {
        "irqbalance moves IRQs back onto shard cores, undoing net.irq_affinity"
    } else {
        "every CPU is a shard: IRQs have nowhere else to go"
    };
    let Ok(entries) = std::fs::read_dir(h.path("proc")) else { return na(name, rec, dedicated, why) };
    let mut pids: Vec<u64> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()))
        .filter(|pid| h.read(&format!("proc/{pid}/comm")).is_some_and(|c| c == "irqbalance"))
        .collect();
    pids.sort_unstable();
    let banned = irqbalance_banned(h);
    let current = match (pids.first(), &banned) {
        (None, _) => "not running".to_string(),
        (Some(p), Some(b)) => format!("running (pid {p}), bans CPU {}", fmt_cpus(b)),
        (Some(p), None) => format!("running (pid {p})"),
    };
    let ok = pids.is_empty() || !dedicated || banned.as_ref().is_some_and(|b| h.covers_shards(b));
    Setting {
        name,
        current: Some(current),
        recommended: rec,
        ok,
        matters: dedicated,
        why: why.into(),
        fix: (!ok).then(|| {
            Fix::Note(format!(
                "stop it (systemctl disable --now irqbalance), or set IRQBALANCE_BANNED_CPULIST={shards} in \
                 /etc/default/irqbalance (/etc/sysconfig/irqbalance) and restart it; then run seqcore tune again"
            ))
        }),
    }
}

/// The CPUs irqbalance's configuration keeps IRQs off, if it names any.
fn irqbalance_banned(h: &Host) -> Option<Vec<usize>> {
    for rel in ["etc/default/irqbalance", "etc/sysconfig/irqbalance"] {
        let Some(text) = h.read(rel) else { continue };
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
            let unquote = |v: &str| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
            if let Some(v) = line.strip_prefix("IRQBALANCE_BANNED_CPULIST=") {
                return cpu_list(&unquote(v));
            }
            if let Some(v) = line.strip_prefix("IRQBALANCE_BANNED_CPUS=") {
                return parse_mask(&unquote(v));
            }
        }
    }
    None
}

/// Network interfaces backed by a device (not `lo`, bridges, tunnels): (name, sysfs directory).
fn nics(h: &Host) -> Vec<(String, PathBuf)> {
    sorted_dir(&h.path("sys/class/net"))
        .into_iter()
        .filter(|d| d.join("device").exists())
        .map(|d| (file_name(&d), d))
        .collect()
}

/// The IRQs of the NICs: the device's MSI vectors, and the lines of `/proc/interrupts` named
/// after the interface (`eth0-TxRx-0`) or its virtio device (`virtio2-input.0`).
fn nic_irqs(h: &Host) -> Vec<u32> {
    let interrupts = h.read("proc/interrupts").unwrap_or_default();
    let mut irqs = Vec::new();
    for (ifname, dir) in nics(h) {
        let dev = dir.join("device");
        let virtio = std::fs::read_link(&dev).ok().map(|p| file_name(&p)).filter(|f| f.starts_with("virtio"));
        let mut msi = vec![dev.join("msi_irqs")];
        if virtio.is_some() {
            msi.push(dev.join("..").join("msi_irqs")); // a virtio device's PCI function
        }
        for d in msi {
            irqs.extend(sorted_dir(&d).iter().filter_map(|p| file_name(p).parse::<u32>().ok()));
        }
        let by_if = format!("{ifname}-");
        let by_virtio = virtio.map(|v| format!("{v}-"));
        for line in interrupts.lines() {
            let Some((num, rest)) = line.split_once(':') else { continue };
            let Ok(irq) = num.trim().parse::<u32>() else { continue };
            let named = rest.split(|c: char| c.is_whitespace() || c == ',').any(|t| {
                t == ifname || t.starts_with(&by_if) || by_virtio.as_ref().is_some_and(|v| t.starts_with(v.as_str()))
            });
            if named {
                irqs.push(irq);
            }
        }
    }
    irqs.sort_unstable();
    irqs.dedup();
    irqs
}

fn irq_affinity(h: &Host) -> Setting {
    let name = "net.irq_affinity";
    let dedicated = h.dedicated();
    let hk = h.housekeeping();
    let rec =
        if dedicated { format!("CPU {} (not shards)", fmt_cpus(&hk)) } else { "any (every CPU is a shard)".into() };
    let why = if dedicated {
        "a NIC interrupt and its softirq on a shard core preempt the shard mid-request"
    } else {
        "every CPU is a shard: IRQs have nowhere else to go"
    };
    let mut seen = Vec::new();
    let mut writes = Vec::new();
    for irq in nic_irqs(h) {
        let rel = format!("proc/irq/{irq}/smp_affinity_list");
        let Some(cpus) = h.read(&rel).and_then(|v| cpu_list(&v)) else { continue };
        if dedicated && cpus.iter().any(|c| h.shards.contains(c)) {
            writes.push(FileWrite { path: h.path(&rel), value: fmt_cpus(&hk) });
        }
        seen.push((irq, fmt_cpus(&cpus)));
    }
    if seen.is_empty() {
        return na(name, rec, dedicated, why);
    }
    by_writes(name, grouped_as(&seen, |irqs| format!("IRQ {}", fmt_ids(irqs)), true), rec, dedicated, why, writes)
}

/// A NIC's queue directories (`rx-0`, `rx-1`... for `prefix` "rx-"), in queue order.
fn queues(nic_dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut qs: Vec<(u32, PathBuf)> = sorted_dir(&nic_dir.join("queues"))
        .into_iter()
        .filter_map(|p| file_name(&p).strip_prefix(prefix).and_then(|n| n.parse::<u32>().ok()).map(|n| (n, p)))
        .collect();
    qs.sort();
    qs.into_iter().map(|(_, p)| p).collect()
}

fn rps(h: &Host) -> Setting {
    let name = "net.rps";
    let dedicated = h.dedicated();
    let hk = h.housekeeping();
    let rec = if dedicated {
        format!("0, or CPU {} only ({})", fmt_cpus(&hk), fmt_mask(&hk))
    } else {
        "any (every CPU is a shard)".into()
    };
    let why = if dedicated {
        "RPS hands received packets to other CPUs' softirqs: keep that work off the shards"
    } else {
        "every CPU is a shard: receive processing lands on one either way"
    };
    let mut seen = Vec::new();
    let mut writes = Vec::new();
    for (ifname, dir) in nics(h) {
        for q in queues(&dir, "rx-") {
            let path = q.join("rps_cpus");
            let Some(v) = read_trimmed(&path) else { continue };
            let cpus = parse_mask(&v).unwrap_or_default();
            if dedicated && cpus.iter().any(|c| h.shards.contains(c)) {
                writes.push(FileWrite { path, value: fmt_mask(&hk) });
            }
            seen.push((format!("{ifname}/{}", file_name(&q)), v));
        }
    }
    if seen.is_empty() {
        return na(name, rec, dedicated, why);
    }
    by_writes(name, grouped(&seen, |qs| qs.join(",")), rec, dedicated, why, writes)
}

fn xps(h: &Host) -> Setting {
    let name = "net.xps";
    let rec = "each shard CPU in exactly one tx queue";
    let why = "with its own tx queue a shard sends without contending for another CPU's queue lock";
    let mut seen = Vec::new();
    let mut multi = false;
    let mut writes = Vec::new();
    for (ifname, dir) in nics(h) {
        let qs = queues(&dir, "tx-");
        let masks: Vec<Option<String>> = qs.iter().map(|q| read_trimmed(&q.join("xps_cpus"))).collect();
        if masks.iter().all(Option::is_none) {
            continue; // no XPS on this device (one queue, or a driver without it)
        }
        for (q, m) in qs.iter().zip(&masks) {
            seen.push((format!("{ifname}/{}", file_name(q)), m.clone().unwrap_or_else(|| "?".into())));
        }
        if qs.len() < 2 {
            continue;
        }
        multi = true;
        let sets: Vec<Vec<usize>> =
            masks.iter().map(|m| m.as_deref().and_then(parse_mask).unwrap_or_default()).collect();
        let each_once = h.shards.iter().all(|c| sets.iter().filter(|s| s.contains(c)).count() == 1);
        if !each_once {
            // CPU k of the online list sends on queue k mod n.
            for (i, q) in qs.iter().enumerate() {
                let cpus: Vec<usize> =
                    h.online.iter().enumerate().filter(|(k, _)| k % qs.len() == i).map(|(_, &c)| c).collect();
                writes.push(FileWrite { path: q.join("xps_cpus"), value: fmt_mask(&cpus) });
            }
        }
    }
    if seen.is_empty() {
        return na(name, rec, false, why);
    }
    by_writes(
        name,
        grouped(&seen, |qs| qs.join(",")),
        rec,
        multi,
        if multi { why } else { "one tx queue per NIC: nothing to choose" },
        writes,
    )
}

// ---------------------------------------------------------------------------------------------
// Isolation (kernel command line)
// ---------------------------------------------------------------------------------------------

/// The CPU list of a command-line parameter such as `isolcpus=managed_irq,domain,1-3` (flags
/// dropped); `Some(empty)` when the parameter is absent, None without a command line.
fn cmdline_cpus(h: &Host, key: &str) -> Option<Vec<usize>> {
    let params = h.cmdline()?;
    let Some((_, value)) = params.iter().rev().find(|(k, _)| k == key) else { return Some(Vec::new()) };
    let value = value.clone().unwrap_or_default();
    if value.is_empty() || value == "all" {
        return Some(h.online.clone());
    }
    let cpus: Vec<&str> = value.split(',').filter(|p| p.starts_with(|c: char| c.is_ascii_digit())).collect();
    Some(cpu_list(&cpus.join(",")).unwrap_or_default())
}

/// A kernel command line setting that should hold every shard CPU (on dedicated shard cores);
/// the fix is `param` on the command line, a reboot, then `then`.
fn isolation_row(h: &Host, name: &'static str, current: Option<Vec<usize>>, param: String, then: &str) -> Setting {
    let why = match name {
        "kernel.isolcpus" => "the scheduler keeps other tasks and kernel threads off isolated shard CPUs",
        "kernel.nohz_full" => "a busy shard alone on its CPU runs without the periodic scheduler tick",
        _ => "RCU callbacks of shard CPUs run in kernel threads on housekeeping CPUs instead",
    };
    let dedicated = h.dedicated();
    let shards = fmt_cpus(&h.shards);
    let rec = if dedicated { shards.clone() } else { "none (every CPU is a shard)".into() };
    let why = if dedicated { why.to_string() } else { "every CPU is a shard: keep one for the kernel first".into() };
    let Some(cpus) = current else { return na(name, rec, dedicated, why) };
    let ok = !dedicated || h.covers_shards(&cpus);
    Setting {
        name,
        current: Some(fmt_cpus(&cpus)),
        recommended: rec,
        ok,
        matters: dedicated,
        why,
        fix: (!ok).then(|| Fix::Note(format!("kernel command line: {param}, then reboot{then}"))),
    }
}

fn isolcpus(h: &Host) -> Setting {
    let current =
        h.read("sys/devices/system/cpu/isolated").and_then(|s| cpu_list(&s)).or_else(|| cmdline_cpus(h, "isolcpus"));
    let s = fmt_cpus(&h.shards);
    let then =
        format!("; then start seqcore with --cpuset {s} (isolated CPUs are not in a new process's affinity mask)");
    isolation_row(h, "kernel.isolcpus", current, format!("isolcpus=managed_irq,domain,{s}"), &then)
}

fn nohz_full(h: &Host) -> Setting {
    // The file exists only in kernels built with NO_HZ_FULL; without it nohz_full= does nothing.
    let current = h.read("sys/devices/system/cpu/nohz_full").and_then(|s| cpu_list(&s));
    isolation_row(h, "kernel.nohz_full", current, format!("nohz_full={}", fmt_cpus(&h.shards)), "")
}

fn rcu_nocbs(h: &Host) -> Setting {
    // nohz_full CPUs are rcu_nocbs CPUs too.
    let current = cmdline_cpus(h, "rcu_nocbs").map(|mut cpus| {
        let nohz = h.read("sys/devices/system/cpu/nohz_full").and_then(|s| cpu_list(&s));
        cpus.extend(nohz.or_else(|| cmdline_cpus(h, "nohz_full")).unwrap_or_default());
        cpus.sort_unstable();
        cpus.dedup();
        cpus
    });
    isolation_row(h, "kernel.rcu_nocbs", current, format!("rcu_nocbs={}", fmt_cpus(&h.shards)), "")
}

// ---------------------------------------------------------------------------------------------
// Listen backlog
// ---------------------------------------------------------------------------------------------

fn backlog_row(h: &Host, name: &'static str, rel: &str, why: &str) -> Setting {
    let rec = format!("≥ {GLOMMIO_BACKLOG}");
    let Some(v) = h.read(rel) else { return na(name, rec, true, why) };
    let ok = v.parse::<u64>().is_ok_and(|n| n >= GLOMMIO_BACKLOG);
    Setting {
        name,
        current: Some(v),
        recommended: rec,
        ok,
        matters: true,
        why: why.into(),
        fix: (!ok).then(|| Fix::Write(vec![FileWrite { path: h.path(rel), value: BACKLOG_WRITE.into() }])),
    }
}

fn somaxconn(h: &Host) -> Setting {
    let why = "caps every listen backlog; glommio asks 1024 for each shard's listener";
    backlog_row(h, "net.core.somaxconn", "proc/sys/net/core/somaxconn", why)
}

fn syn_backlog(h: &Host) -> Setting {
    let why = "half-open connections per listener; below the backlog a connection burst falls to SYN cookies or drops";
    backlog_row(h, "net.ipv4.tcp_max_syn_backlog", "proc/sys/net/ipv4/tcp_max_syn_backlog", why)
}

fn listen_backlog(h: &Host) -> Setting {
    let name = "net.listen_backlog";
    let why = "connections the kernel queues on a shard's listener before it accepts them; more are refused";
    let rec = format!("{GLOMMIO_BACKLOG} (what glommio asks)");
    let Some(max) = h.read("proc/sys/net/core/somaxconn").and_then(|v| v.parse::<u64>().ok()) else {
        return na(name, rec, true, why);
    };
    let effective = max.min(GLOMMIO_BACKLOG);
    let ok = effective >= GLOMMIO_BACKLOG;
    Setting {
        name,
        current: Some(format!("{effective} per shard listener")),
        recommended: rec,
        ok,
        matters: true,
        why: why.into(),
        fix: (!ok).then(|| Fix::Note("follows net.core.somaxconn".into())),
    }
}

// ---------------------------------------------------------------------------------------------
// io_uring
// ---------------------------------------------------------------------------------------------

fn memlock(h: &Host) -> Setting {
    let name = "limits.memlock";
    let shards = h.shards.len().max(1) as u64;
    let need = GLOMMIO_MEMLOCK_MIN + shards * GLOMMIO_MEMLOCK_PER_SHARD;
    let rec = format!("unlimited, or ≥ {} for {shards} shard(s)", fmt_bytes(need));
    let why = "glommio needs 512 KiB locked to start, and 30 MiB per shard for its io_uring buffers (not charged with \
               CAP_IPC_LOCK)";
    let limits = h.read("proc/self/limits").unwrap_or_default();
    let Some(line) = limits.lines().find(|l| l.starts_with("Max locked memory")) else {
        return na(name, rec, true, why);
    };
    let mut values = line.trim_start_matches("Max locked memory").split_whitespace();
    let parse = |v: Option<&str>| match v {
        Some("unlimited") => Some(None),
        Some(v) => v.parse::<u64>().ok().map(Some),
        None => None,
    };
    let (Some(soft), Some(hard)) = (parse(values.next()), parse(values.next())) else {
        return na(name, rec, true, why);
    };
    let ipc_lock = status_field(&h.root, "CapEff")
        .and_then(|c| u64::from_str_radix(&c, 16).ok())
        .is_some_and(|c| (c >> CAP_IPC_LOCK) & 1 == 1);
    let ok = match soft {
        None => true,
        Some(b) => b >= need || (ipc_lock && b >= GLOMMIO_MEMLOCK_MIN),
    };
    let fmt_limit = |l: Option<u64>| l.map_or_else(|| "unlimited".to_string(), fmt_bytes);
    let mut current = format!("{} (hard {})", fmt_limit(soft), fmt_limit(hard));
    if ipc_lock {
        current.push_str(", with CAP_IPC_LOCK");
    }
    Setting {
        name,
        current: Some(current),
        recommended: rec,
        ok,
        matters: true,
        why: format!("{why}; this is this shell's limit, the server's unit may set another"),
        fix: (!ok).then(|| {
            Fix::Note(
                "raise it where seqcore starts: `ulimit -l unlimited`, LimitMEMLOCK=infinity in a systemd unit, \
                 memlock in /etc/security/limits.conf, or docker run --ulimit memlock=-1"
                    .into(),
            )
        }),
    }
}

fn io_uring_disabled(h: &Host) -> Setting {
    let name = "kernel.io_uring_disabled";
    const REL: &str = "proc/sys/kernel/io_uring_disabled";
    let why = "1 or 2 keeps glommio from making its io_uring rings: no shard starts";
    let Some(v) = h.read(REL) else { return na(name, "0", true, why) };
    let ok = v == "0";
    Setting {
        name,
        current: Some(v),
        recommended: "0".into(),
        ok,
        matters: true,
        why: why.into(),
        fix: (!ok).then(|| Fix::Write(vec![FileWrite { path: h.path(REL), value: "0".into() }])),
    }
}

fn io_uring_setup(h: &Host) -> Setting {
    let name = "io_uring.setup";
    let why = "each shard is a glommio executor, which needs io_uring_setup to work";
    let Some(result) = &h.io_uring else { return na(name, "works", true, why) };
    let ok = result.is_ok();
    Setting {
        name,
        current: Some(match result {
            Ok(()) => "works (a glommio executor started)".into(),
            Err(e) => format!("fails: {e}"),
        }),
        recommended: "works".into(),
        ok,
        matters: true,
        why: why.into(),
        fix: (!ok).then(|| {
            Fix::Note(
                "check kernel.io_uring_disabled and limits.memlock; in a container, allow io_uring_setup, \
                 io_uring_enter and io_uring_register in its seccomp profile"
                    .into(),
            )
        }),
    }
}

/// Starts one glommio executor (what every shard does first) on a thread of its own, so that
/// whatever glommio does on failure stays there.
pub fn probe_io_uring() -> Result<(), String> {
    let t = std::thread::Builder::new()
        .name("tune-io_uring".into())
        .spawn(|| {
            glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().map(drop).map_err(|e| e.to_string())
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    t.join().unwrap_or_else(|_| Err("glommio panicked while making an executor".into()))
}

// ---------------------------------------------------------------------------------------------
// Clock
// ---------------------------------------------------------------------------------------------

fn clocksource(h: &Host) -> Setting {
    let name = "clocksource";
    const REL: &str = "sys/devices/system/clocksource/clocksource0/current_clocksource";
    let why = "every request reads the clock; tsc (and kvm-clock) are read in user space, hpet and acpi_pm trap";
    let available = h.read("sys/devices/system/clocksource/clocksource0/available_clocksource").unwrap_or_default();
    let has_tsc = available.split_whitespace().any(|c| c == "tsc");
    let Some(cur) = h.read(REL) else { return na(name, "tsc", true, why) };
    let ok = FAST_CLOCKSOURCES.contains(&cur.as_str());
    let rec = if has_tsc || !ok { "tsc".to_string() } else { cur.clone() };
    let fix = (!ok).then(|| {
        if has_tsc {
            Fix::Write(vec![FileWrite { path: h.path(REL), value: "tsc".into() }])
        } else {
            Fix::Note(format!(
                "no user-space clocksource offered (available: {available}); the kernel may have found the tsc \
                 unstable (see dmesg)"
            ))
        }
    });
    Setting { name, current: Some(cur), recommended: rec, ok, matters: true, why: why.into(), fix }
}

// ---------------------------------------------------------------------------------------------
// Output: the table, JSON, the dry-run script, applying
// ---------------------------------------------------------------------------------------------

fn describe(h: &Host) -> String {
    let hk = h.housekeeping();
    format!(
        "shard CPUs {} ({}); housekeeping CPUs {}",
        fmt_cpus(&h.shards),
        h.shards_from,
        if hk.is_empty() { "none: every online CPU is a shard".into() } else { fmt_cpus(&hk) }
    )
}

/// `seqcore tune check`'s aligned table.
pub fn table(h: &Host, rows: &[Setting]) -> String {
    let head = ["SETTING", "CURRENT", "RECOMMENDED", "MATTERS", "STATUS", "WHY"].map(String::from);
    let mut cells = vec![head];
    for r in rows {
        cells.push([
            r.name.to_string(),
            r.current.clone().unwrap_or_else(|| "not available here".into()),
            r.recommended.clone(),
            if r.matters { "yes" } else { "no" }.to_string(),
            r.status().to_string(),
            r.why.clone(),
        ]);
    }
    let mut widths = [0usize; 5];
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = format!("seqcore tune check: {}\n\n", describe(h));
    for row in &cells {
        let mut line = String::new();
        for (w, c) in widths.iter().zip(row.iter()) {
            line.push_str(&format!("{c:<w$}  "));
        }
        line.push_str(&row[5]);
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let off = rows.iter().filter(|r| r.off()).count();
    if off == 0 {
        out.push_str("\nevery setting that matters here is at its recommendation\n");
    } else {
        out.push_str(&format!(
            "\n{off} setting(s) that matter here are off their recommendation: `seqcore tune --dry-run` shows the fixes\n"
        ));
    }
    out
}

fn setting_json(r: &Setting) -> Value {
    let fix = match &r.fix {
        None => Value::Null,
        Some(Fix::Write(ws)) => json!({
            "write": ws.iter().map(|w| json!({"path": w.path.display().to_string(), "value": w.value})).collect::<Vec<_>>()
        }),
        Some(Fix::Note(n)) => json!({ "note": n }),
    };
    json!({
        "name": r.name,
        "current": r.current,
        "recommended": r.recommended,
        "matters": r.matters,
        "ok": r.ok,
        "status": r.status(),
        "why": r.why,
        "fix": fix,
    })
}

/// `seqcore tune check --json`.
pub fn json_report(h: &Host, rows: &[Setting]) -> String {
    let v = json!({
        "shard_cpus": h.shards,
        "shards_from": h.shards_from,
        "online_cpus": h.online,
        "housekeeping_cpus": h.housekeeping(),
        "off": rows.iter().filter(|r| r.off()).count(),
        "settings": rows.iter().map(setting_json).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

/// One line of a sh comment (no line breaks can end it early).
fn comment(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// `s` as one sh word: bare when it is plainly safe, else single-quoted.
fn sh_word(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./,:+=@%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// `seqcore tune --dry-run`: a sh script of the writes `seqcore tune` would make, with the
/// settings it cannot change at run time as comments.
pub fn script(h: &Host, rows: &[Setting]) -> String {
    let mut out = String::from("#!/bin/sh\n");
    out.push_str(&format!(
        "# seqcore tune --dry-run: what `seqcore tune` would change, for {}.\n",
        comment(&describe(h))
    ));
    out.push_str("# Run it as root. Each write lasts until the next reboot.\n");
    let mut any = false;
    for r in rows.iter().filter(|r| r.off()) {
        any = true;
        let current = r.current.as_deref().unwrap_or_default();
        out.push_str(&format!("\n# {}: {} -> {}\n", r.name, comment(current), comment(&r.recommended)));
        match &r.fix {
            Some(Fix::Write(ws)) => {
                for w in ws {
                    out.push_str(&format!("echo {} > {}\n", sh_word(&w.value), sh_word(&w.path.to_string_lossy())));
                }
            }
            Some(Fix::Note(n)) => out.push_str(&format!("# not a run-time setting: {}\n", comment(n))),
            None => out.push_str("# no automatic fix\n"),
        }
    }
    if !any {
        out.push_str("\n# nothing to change: every setting that matters here is at its recommendation\n");
    }
    out
}

/// Writes `value` to an existing file, as `echo value > path` does; never creates one.
fn write_value(path: &Path, value: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.permissions().mode() & 0o222 == 0 {
        return Err("the file is read-only".into());
    }
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(path).map_err(|e| e.to_string())?;
    f.write_all(format!("{value}\n").as_bytes()).map_err(|e| e.to_string())
}

/// `seqcore tune`: makes the run-time writes of the settings that are off (only when `is_root`),
/// printing each before and after, checks again, and says what is still off and why. Returns the
/// report and the exit code.
pub fn apply(h: &Host, rows: &[Setting], is_root: bool) -> (String, i32) {
    let mut out = format!("seqcore tune: {}\n", describe(h));
    if !rows.iter().any(Setting::off) {
        out.push_str("nothing to change: every setting that matters here is at its recommendation\n");
        return (out, EXIT_OK);
    }
    for r in rows.iter().filter(|r| r.off()) {
        let Some(Fix::Write(ws)) = &r.fix else { continue };
        for w in ws {
            let path = w.path.display();
            if !is_root {
                out.push_str(&format!("{}: would need root: echo {} > {path}\n", r.name, w.value));
                continue;
            }
            let before = read_trimmed(&w.path).unwrap_or_else(|| "?".into());
            match write_value(&w.path, &w.value) {
                Ok(()) => {
                    let after = read_trimmed(&w.path).unwrap_or_else(|| "?".into());
                    out.push_str(&format!("{}: {path}: {before} -> {after}\n", r.name));
                }
                Err(e) => out.push_str(&format!("{}: {path}: not changed ({e}); still {before}\n", r.name)),
            }
        }
    }
    let after = check(h);
    let left: Vec<&Setting> = after.iter().filter(|r| r.off()).collect();
    for r in &left {
        let current = r.current.as_deref().unwrap_or_default();
        let how = match &r.fix {
            Some(Fix::Note(n)) => format!("not a run-time setting: {n}"),
            Some(Fix::Write(_)) if !is_root => "needs root".into(),
            Some(Fix::Write(_)) => "the write did not take".into(),
            None => "no automatic fix".into(),
        };
        out.push_str(&format!("{}: still {current} (recommended {}): {how}\n", r.name, r.recommended));
    }
    if left.is_empty() {
        out.push_str("every setting that matters here is now at its recommendation\n");
        (out, EXIT_OK)
    } else {
        out.push_str(&format!("{} setting(s) that matter here are still off their recommendation\n", left.len()));
        (out, EXIT_NOT_APPLIED)
    }
}

// ---------------------------------------------------------------------------------------------
// The command line
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Check,
    DryRun,
    Apply,
}

#[derive(Debug)]
struct Options {
    mode: Mode,
    json: bool,
    root: PathBuf,
    cpuset: Option<Vec<usize>>,
    cores: Option<usize>,
}

#[derive(Debug)]
enum ParseError {
    Help,
    Usage(String),
}

fn parse(args: &[String]) -> Result<Options, ParseError> {
    let usage = |m: String| Err(ParseError::Usage(m));
    let (mut check, mut dry_run, mut json) = (false, false, false);
    let (mut root, mut cpuset, mut cores): (Option<PathBuf>, Option<Vec<usize>>, Option<usize>) = (None, None, None);
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        let first = i == 0;
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg, None),
        };
        let mut value = || -> Result<String, ParseError> {
            if let Some(v) = &inline {
                return Ok(v.clone());
            }
            i += 1;
            args.get(i).cloned().ok_or_else(|| ParseError::Usage(format!("{flag} needs a value")))
        };
        match flag {
            "--help" | "-h" | "help" => return Err(ParseError::Help),
            "check" if first => check = true,
            "--dry-run" | "--json" if inline.is_some() => return usage(format!("{flag} takes no value")),
            "--dry-run" if !dry_run => dry_run = true,
            "--json" if !json => json = true,
            "--root" if root.is_none() => root = Some(PathBuf::from(value()?)),
            "--cpuset" if cpuset.is_none() => {
                cpuset = Some(parse_cpuset(&value()?).map_err(|e| ParseError::Usage(e.to_string()))?);
            }
            "--cores" if cores.is_none() => {
                let v = value()?;
                match v.parse::<usize>() {
                    Ok(n) if n > 0 => cores = Some(n),
                    _ => return usage(format!("--cores: expected a positive number, got {v:?}")),
                }
            }
            "--dry-run" | "--json" | "--root" | "--cpuset" | "--cores" => return usage(format!("{flag} given twice")),
            _ => return usage(format!("unexpected argument {arg:?}")),
        }
        i += 1;
    }
    let mode = match (check, dry_run) {
        (true, true) => return usage("--dry-run goes with `seqcore tune`, not `check` (check changes nothing)".into()),
        (true, false) => Mode::Check,
        (false, true) => Mode::DryRun,
        (false, false) => Mode::Apply,
    };
    if json && mode != Mode::Check {
        return usage("--json goes with `seqcore tune check`".into());
    }
    Ok(Options { mode, json, root: root.unwrap_or_else(|| PathBuf::from("/")), cpuset, cores })
}

fn print_out(s: &str) {
    let _ = std::io::stdout().lock().write_all(s.as_bytes());
}

fn print_err(s: &str) {
    let _ = std::io::stderr().lock().write_all(format!("seqcore tune: {s}\n").as_bytes());
}

/// `seqcore tune ...` (the arguments after `tune`); returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let opts = match parse(args) {
        Ok(o) => o,
        Err(ParseError::Help) => {
            print_out(HELP);
            return EXIT_OK;
        }
        Err(ParseError::Usage(m)) => {
            print_err(&format!("{m}; see seqcore tune --help"));
            return EXIT_USAGE;
        }
    };
    // On this machine the shard CPUs are the server's own placement plan (one shard per
    // physical core by default, src/plan.rs); on a tree under --root, or where hwloc cannot read
    // the machine, they are --cpuset / the affinity mask as read from the tree.
    let planned =
        (opts.root == Path::new("/")).then(crate::topology::Machine::read).and_then(Result::ok).map(|machine| {
            let request = crate::plan::PlanRequest {
                cpuset: opts.cpuset.clone(),
                numa_nodes: None,
                cores: opts.cores,
                smt: crate::config::Smt::Off,
                shards_max: crate::plan::SHARDS_MAX,
                models: None,
            };
            crate::plan::plan(&machine, &request).map(|p| p.cpus())
        });
    let made = match planned {
        Some(Ok(cpus)) => Host::new(&opts.root, Some(&cpus), None).map(|mut h| {
            h.shards_from = "the server's placement plan: one shard per physical core";
            h
        }),
        Some(Err(e)) => Err(e.to_string()),
        None => Host::new(&opts.root, opts.cpuset.as_deref(), opts.cores),
    };
    let mut host = match made {
        Ok(h) => h,
        Err(e) => {
            print_err(&e);
            return EXIT_USAGE;
        }
    };
    // The probe runs on this kernel, so only when the tree read is this machine's.
    if opts.root == Path::new("/") {
        host.io_uring = Some(probe_io_uring());
    }
    let rows = check(&host);
    match opts.mode {
        Mode::Check => {
            print_out(&if opts.json { json_report(&host, &rows) } else { table(&host, &rows) });
            if rows.iter().any(Setting::off) {
                EXIT_OFF
            } else {
                EXIT_OK
            }
        }
        Mode::DryRun => {
            print_out(&script(&host, &rows));
            EXIT_OK
        }
        Mode::Apply => {
            let is_root = effective_uid(&host.root) == Some(0);
            let (text, code) = apply(&host, &rows, is_root);
            print_out(&text);
            code
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small readers and formats
// ---------------------------------------------------------------------------------------------

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// The entries of a directory, sorted; empty when it cannot be read.
fn sorted_dir(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
    v.sort();
    v
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
}

/// A field of `proc/self/status` (`Cpus_allowed_list`, `Uid`, `CapEff`).
fn status_field(root: &Path, key: &str) -> Option<String> {
    let text = read_trimmed(&root.join("proc/self/status"))?;
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(|v| v.trim().to_string()))
}

fn effective_uid(root: &Path) -> Option<u32> {
    status_field(root, "Uid")?.split_whitespace().nth(1)?.parse().ok()
}

/// A kernel CPU list (`0-3,8`; empty or `(null)`: none).
fn cpu_list(s: &str) -> Option<Vec<usize>> {
    let s = s.trim();
    if s.is_empty() || s == "(null)" {
        return Some(Vec::new());
    }
    parse_cpuset(s).ok()
}

/// `0-3,8` for sorted CPUs; `none` for none.
fn fmt_cpus(cpus: &[usize]) -> String {
    if cpus.is_empty() {
        return "none".into();
    }
    let mut cpus = cpus.to_vec();
    cpus.sort_unstable();
    cpus.dedup();
    let mut parts = Vec::new();
    let mut start = cpus[0];
    let mut prev = start;
    for &c in cpus.iter().skip(1).chain(std::iter::once(&usize::MAX)) {
        if c != prev.wrapping_add(1) {
            parts.push(if start == prev { format!("{start}") } else { format!("{start}-{prev}") });
            start = c;
        }
        prev = c;
    }
    parts.join(",")
}

/// Numbers as a comma list, the first 8 then a count of the rest.
fn fmt_ids(ids: &[u32]) -> String {
    let mut s: Vec<String> = ids.iter().take(8).map(u32::to_string).collect();
    if ids.len() > 8 {
        s.push(format!("and {} more", ids.len() - 8));
    }
    s.join(",")
}

/// A kernel CPU mask (`f`, `00000000,00000001`: 32-bit hex words, highest first).
fn parse_mask(s: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for (i, word) in s.trim().split(',').rev().enumerate() {
        let w = u32::from_str_radix(word, 16).ok()?;
        cpus.extend((0..32).filter(|b| (w >> b) & 1 == 1).map(|b| i * 32 + b));
    }
    cpus.sort_unstable();
    Some(cpus)
}

/// The kernel mask of `cpus` (`0` for none).
fn fmt_mask(cpus: &[usize]) -> String {
    let Some(&max) = cpus.iter().max() else { return "0".into() };
    let mut words = vec![0u32; max / 32 + 1];
    for &c in cpus {
        words[c / 32] |= 1 << (c % 32);
    }
    let hex: Vec<String> = words
        .iter()
        .rev()
        .enumerate()
        .map(|(i, w)| if i == 0 { format!("{w:x}") } else { format!("{w:08x}") })
        .collect();
    hex.join(",")
}

fn fmt_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1 << 20)),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// Items by value: `v` when all agree, else `v1 on <label of its items>; v2 on ...`.
fn grouped<T: Clone>(items: &[(T, String)], label: impl Fn(&[T]) -> String) -> String {
    grouped_as(items, label, false)
}

/// [`grouped`], naming the items of a single group too when `always` (`0-1 (IRQ 38,39)`).
fn grouped_as<T: Clone>(items: &[(T, String)], label: impl Fn(&[T]) -> String, always: bool) -> String {
    let mut groups: Vec<(String, Vec<T>)> = Vec::new();
    for (item, value) in items {
        match groups.iter_mut().find(|(v, _)| v == value) {
            Some((_, members)) => members.push(item.clone()),
            None => groups.push((value.clone(), vec![item.clone()])),
        }
    }
    if let [(value, members)] = groups.as_slice() {
        return if always { format!("{value} ({})", label(members)) } else { value.clone() };
    }
    groups.iter().map(|(v, members)| format!("{v} on {}", label(members))).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fake root directory, removed when dropped.
    struct Tree(PathBuf);

    impl Tree {
        fn new(tag: &str) -> Tree {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("seqcore-tune-{}-{tag}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Tree(p)
        }

        fn file(&self, rel: &str, content: &str) {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("{content}\n")).unwrap();
        }

        fn dir(&self, rel: &str) {
            std::fs::create_dir_all(self.0.join(rel)).unwrap();
        }

        fn read(&self, rel: &str) -> String {
            std::fs::read_to_string(self.0.join(rel)).unwrap().trim().to_string()
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A 4-CPU, 2-node machine with two NICs; `good` tuned for shards on CPUs 1-3, else not.
    fn fake(good: bool) -> Tree {
        let t = Tree::new(if good { "good" } else { "bad" });
        let g = |a: &str, b: &str| if good { a.to_string() } else { b.to_string() };
        t.file(
            "proc/self/status",
            "Name:\tseqcore\nUid:\t0\t0\t0\t0\nCapEff:\t0000000000000000\nCpus_allowed_list:\t0-3",
        );
        t.file(
            "proc/self/limits",
            &format!(
                "Limit                     Soft Limit           Hard Limit           Units\n\
                 Max locked memory         {0}            {0}            bytes",
                g("unlimited", "65536")
            ),
        );
        t.file("sys/devices/system/cpu/online", "0-3");
        t.file("sys/devices/system/cpu/cpuidle/current_driver", "intel_idle");
        for c in 0..4 {
            let cpu = format!("sys/devices/system/cpu/cpu{c}");
            t.file(&format!("{cpu}/cpufreq/scaling_governor"), &g("performance", "powersave"));
            t.file(&format!("{cpu}/cpufreq/scaling_available_governors"), &g("performance powersave", "powersave"));
            for (k, (state, exit_us)) in [("POLL", 0), ("C1", 2), ("C6", 133)].into_iter().enumerate() {
                let dir = format!("{cpu}/cpuidle/state{k}");
                t.file(&format!("{dir}/name"), state);
                t.file(&format!("{dir}/latency"), &exit_us.to_string());
                t.file(&format!("{dir}/disable"), if good && exit_us > 10 { "1" } else { "0" });
            }
            t.file(&format!("{cpu}/topology/thread_siblings_list"), &c.to_string());
        }
        t.file("sys/devices/system/cpu/intel_pstate/no_turbo", &g("0", "1"));
        t.file("sys/kernel/mm/transparent_hugepage/enabled", &g("always [madvise] never", "[always] madvise never"));
        t.file(
            "sys/kernel/mm/transparent_hugepage/defrag",
            &g("always defer defer+madvise [madvise] never", "[always] defer defer+madvise madvise never"),
        );
        t.dir("sys/devices/system/node/node0");
        t.dir("sys/devices/system/node/node1");
        t.file("proc/sys/kernel/numa_balancing", &g("0", "1"));
        t.file("proc/sys/vm/swappiness", &g("1", "60"));
        t.file("proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n/swapfile\tfile\t1048572\t0\t-2");
        t.file("proc/1/comm", "init");
        if !good {
            t.file("proc/77/comm", "irqbalance");
        }
        // eth0: a PCI NIC with its MSI vectors; eth1: virtio-net, named in /proc/interrupts.
        for irq in [40, 41] {
            t.dir(&format!("sys/class/net/eth0/device/msi_irqs/{irq}"));
        }
        t.dir("sys/devices/pci0000:00/0000:00:03.0/virtio2");
        t.dir("sys/class/net/eth1");
        std::os::unix::fs::symlink(
            t.0.join("sys/devices/pci0000:00/0000:00:03.0/virtio2"),
            t.0.join("sys/class/net/eth1/device"),
        )
        .unwrap();
        t.dir("sys/class/net/lo/queues/rx-0");
        t.file(
            "proc/interrupts",
            "           CPU0       CPU1\n 26:   0  10  IO-APIC   4-edge      ttyS0\n \
             38:   0  23527  PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0\n \
             39:   21186  0  PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0",
        );
        for irq in [38, 39, 40, 41] {
            t.file(&format!("proc/irq/{irq}/smp_affinity_list"), &g("0", "0-3"));
        }
        t.file("proc/irq/26/smp_affinity_list", "0-3"); // not a NIC's: left alone
        for nic in ["eth0", "eth1"] {
            t.file(&format!("sys/class/net/{nic}/queues/rx-0/rps_cpus"), &g("1", "e"));
        }
        for q in 0..4 {
            let mask = if good { format!("{:x}", 1 << q) } else { "0".into() };
            t.file(&format!("sys/class/net/eth0/queues/tx-{q}/xps_cpus"), &mask);
        }
        t.dir("sys/class/net/eth1/queues/tx-0"); // one queue without xps_cpus
        t.file("sys/devices/system/cpu/isolated", &g("1-3", ""));
        t.file("sys/devices/system/cpu/nohz_full", &g("1-3", "(null)"));
        t.file(
            "proc/cmdline",
            &g("BOOT_IMAGE=/vmlinuz isolcpus=managed_irq,domain,1-3 nohz_full=1-3 rcu_nocbs=1-3 -- x", "quiet"),
        );
        t.file("proc/sys/net/core/somaxconn", &g("4096", "128"));
        t.file("proc/sys/net/ipv4/tcp_max_syn_backlog", &g("4096", "512"));
        t.file("proc/sys/kernel/io_uring_disabled", &g("0", "2"));
        t.file("sys/devices/system/clocksource/clocksource0/available_clocksource", "tsc hpet acpi_pm");
        t.file("sys/devices/system/clocksource/clocksource0/current_clocksource", &g("tsc", "hpet"));
        t
    }

    fn host(t: &Tree, cpuset: &[usize], io_uring: Result<(), String>) -> Host {
        let mut h = Host::new(&t.0, Some(cpuset), None).unwrap();
        h.io_uring = Some(io_uring);
        h
    }

    fn row<'a>(rows: &'a [Setting], name: &str) -> &'a Setting {
        rows.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no row {name}"))
    }

    fn writes(r: &Setting) -> Vec<(PathBuf, String)> {
        match &r.fix {
            Some(Fix::Write(ws)) => ws.iter().map(|w| (w.path.clone(), w.value.clone())).collect(),
            other => panic!("{}: expected writes, got {other:?}", r.name),
        }
    }

    fn note(r: &Setting) -> String {
        match &r.fix {
            Some(Fix::Note(n)) => n.clone(),
            other => panic!("{}: expected a note, got {other:?}", r.name),
        }
    }

    const NAMES: &[&str] = &[
        "cpu.governor",
        "cpu.boost",
        "cpu.cstates",
        "cpu.smt_siblings",
        "mm.transparent_hugepage",
        "mm.transparent_hugepage.defrag",
        "kernel.numa_balancing",
        "vm.swappiness",
        "irqbalance",
        "net.irq_affinity",
        "net.rps",
        "net.xps",
        "kernel.isolcpus",
        "kernel.nohz_full",
        "kernel.rcu_nocbs",
        "net.core.somaxconn",
        "net.listen_backlog",
        "net.ipv4.tcp_max_syn_backlog",
        "limits.memlock",
        "kernel.io_uring_disabled",
        "io_uring.setup",
        "clocksource",
    ];

    #[test]
    fn a_good_machine_is_all_ok() {
        let t = fake(true);
        let h = host(&t, &[1, 2, 3], Ok(()));
        let rows = check(&h);
        assert_eq!(rows.iter().map(|r| r.name).collect::<Vec<_>>(), NAMES);
        for r in &rows {
            assert!(r.current.is_some(), "{} not available: {r:?}", r.name);
            assert!(r.ok, "{} off: {r:?}", r.name);
            assert_eq!(r.fix, None, "{}", r.name);
        }
        assert_eq!(row(&rows, "net.irq_affinity").current.as_deref(), Some("0 (IRQ 38,39,40,41)"));
        assert_eq!(row(&rows, "cpu.cstates").current.as_deref(), Some("intel_idle, deepest enabled C1 (2 µs)"));
        assert_eq!(row(&rows, "net.listen_backlog").current.as_deref(), Some("1024 per shard listener"));
        assert!(script(&h, &rows).contains("# nothing to change"));
        assert_eq!(apply(&h, &rows, true).1, EXIT_OK);
        assert!(table(&h, &rows).contains("every setting that matters here is at its recommendation"));
    }

    #[test]
    fn a_bad_machine_is_off_with_fixes() {
        let t = fake(false);
        let h = host(&t, &[1, 2, 3], Err("Operation not permitted".into()));
        let rows = check(&h);
        let root = &t.0;
        for name in NAMES.iter().filter(|n| **n != "cpu.smt_siblings") {
            let r = row(&rows, name);
            assert!(r.off(), "{name} should be off: {r:?}");
        }
        // performance governor missing: nothing to write, a note.
        let gov = row(&rows, "cpu.governor");
        assert_eq!(gov.current.as_deref(), Some("powersave"));
        assert!(note(gov).contains("no performance governor on CPU 1-3"), "{gov:?}");
        assert_eq!(
            writes(row(&rows, "mm.transparent_hugepage")),
            [(root.join("sys/kernel/mm/transparent_hugepage/enabled"), "madvise".into())]
        );
        assert_eq!(row(&rows, "kernel.numa_balancing").current.as_deref(), Some("1"));
        assert_eq!(
            writes(row(&rows, "kernel.numa_balancing")),
            [(root.join("proc/sys/kernel/numa_balancing"), "0".into())]
        );
        assert_eq!(writes(row(&rows, "vm.swappiness")), [(root.join("proc/sys/vm/swappiness"), "1".into())]);
        assert_eq!(
            writes(row(&rows, "net.core.somaxconn")),
            [(root.join("proc/sys/net/core/somaxconn"), "4096".into())]
        );
        assert_eq!(row(&rows, "net.listen_backlog").current.as_deref(), Some("128 per shard listener"));
        // IRQs on shard cores: each NIC IRQ (MSI and virtio) goes to the housekeeping CPU 0.
        let irq = row(&rows, "net.irq_affinity");
        assert_eq!(irq.current.as_deref(), Some("0-3 (IRQ 38,39,40,41)"));
        let expect: Vec<(PathBuf, String)> = [38, 39, 40, 41]
            .iter()
            .map(|i| (root.join(format!("proc/irq/{i}/smp_affinity_list")), "0".into()))
            .collect();
        assert_eq!(writes(irq), expect);
        assert_eq!(
            writes(row(&rows, "net.rps")),
            [
                (root.join("sys/class/net/eth0/queues/rx-0/rps_cpus"), "1".into()),
                (root.join("sys/class/net/eth1/queues/rx-0/rps_cpus"), "1".into())
            ]
        );
        let xps: Vec<String> = writes(row(&rows, "net.xps")).into_iter().map(|(_, v)| v).collect();
        assert_eq!(xps, ["1", "2", "4", "8"]);
        assert_eq!(writes(row(&rows, "cpu.cstates")).len(), 3); // C6 on each shard CPU
        assert!(note(row(&rows, "irqbalance")).contains("IRQBALANCE_BANNED_CPULIST=1-3"));
        assert!(note(row(&rows, "kernel.isolcpus")).contains("isolcpus=managed_irq,domain,1-3"));
        assert!(note(row(&rows, "kernel.nohz_full")).contains("nohz_full=1-3"));
        assert!(note(row(&rows, "kernel.rcu_nocbs")).contains("rcu_nocbs=1-3"));
        assert!(row(&rows, "limits.memlock").current.as_deref().unwrap().starts_with("64 KiB"));
        assert!(row(&rows, "io_uring.setup").current.as_deref().unwrap().contains("Operation not permitted"));
        assert_eq!(writes(row(&rows, "clocksource")).len(), 1);
        assert_eq!(rows.iter().filter(|r| r.off()).count(), NAMES.len() - 1, "all but cpu.smt_siblings");
    }

    #[test]
    fn what_matters_depends_on_the_shard_cpus() {
        let t = fake(false);
        // Every CPU a shard: no housekeeping CPU, so IRQs, RPS and isolation do not matter.
        let rows = check(&host(&t, &[0, 1, 2, 3], Ok(())));
        for name in
            ["irqbalance", "net.irq_affinity", "net.rps", "kernel.isolcpus", "kernel.nohz_full", "kernel.rcu_nocbs"]
        {
            let r = row(&rows, name);
            assert!(!r.matters && !r.off(), "{name}: {r:?}");
        }
        assert!(row(&rows, "cpu.governor").off());
        // The default: the affinity mask (0-3), cut by --cores.
        let h = Host::new(&t.0, None, Some(2)).unwrap();
        assert_eq!((h.shards.clone(), h.housekeeping()), (vec![0, 1], vec![2, 3]));
        assert_eq!(h.shards_from, "this process's affinity mask");
        assert!(row(&check(&h), "kernel.isolcpus").matters);
        assert!(Host::new(&t.0, Some(&[7]), None).unwrap_err().contains("CPU 7 is not online"));
        assert!(Host::new(&t.0, None, Some(5)).is_err());
    }

    #[test]
    fn an_empty_root_has_nothing_available() {
        let t = Tree::new("empty");
        let h = Host::new(&t.0, None, None).unwrap();
        let rows = check(&h);
        assert_eq!(rows.len(), NAMES.len());
        for r in &rows {
            assert_eq!(r.current, None, "{r:?}");
            assert!(!r.off());
        }
        assert!(table(&h, &rows).contains("not available here"));
        assert!(script(&h, &rows).contains("# nothing to change"));
        assert_eq!(apply(&h, &rows, true).1, EXIT_OK);
        let code = main(&["check".into(), "--root".into(), t.0.display().to_string()]);
        assert_eq!(code, EXIT_OK);
    }

    #[test]
    fn applying_writes_what_it_can_and_says_what_is_left() {
        let t = fake(false);
        let h = host(&t, &[1, 2, 3], Ok(()));
        let rows = check(&h);

        // Not root: nothing is written.
        let (text, code) = apply(&h, &rows, false);
        assert_eq!(code, EXIT_NOT_APPLIED);
        assert!(text.contains("vm.swappiness: would need root: echo 1 > "), "{text}");
        assert_eq!(t.read("proc/sys/vm/swappiness"), "60");

        let (text, code) = apply(&h, &rows, true);
        assert_eq!(code, EXIT_NOT_APPLIED, "{text}");
        let swap = t.0.join("proc/sys/vm/swappiness");
        assert!(text.contains(&format!("vm.swappiness: {}: 60 -> 1", swap.display())), "{text}");
        assert_eq!(t.read("sys/kernel/mm/transparent_hugepage/enabled"), "madvise");
        assert_eq!(t.read("proc/irq/40/smp_affinity_list"), "0");
        assert_eq!(t.read("proc/irq/26/smp_affinity_list"), "0-3");
        assert_eq!(t.read("sys/class/net/eth0/queues/tx-3/xps_cpus"), "8");
        assert!(
            text.contains("kernel.isolcpus: still none (recommended 1-3): not a run-time setting: kernel command line")
        );
        assert!(text.contains("cpu.governor: still powersave"));
        let after = check(&h);
        let left: Vec<&str> = after.iter().filter(|r| r.off()).map(|r| r.name).collect();
        assert_eq!(
            left,
            ["cpu.governor", "irqbalance", "kernel.isolcpus", "kernel.nohz_full", "kernel.rcu_nocbs", "limits.memlock"]
        );
    }

    #[test]
    fn the_dry_run_is_a_sh_script() {
        let t = fake(false);
        let h = host(&t, &[1, 2, 3], Ok(()));
        let s = script(&h, &check(&h));
        assert!(s.starts_with("#!/bin/sh\n"));
        let thp = t.0.join("sys/kernel/mm/transparent_hugepage/enabled");
        assert!(s.contains(&format!("\necho madvise > {}\n", sh_word(&thp.to_string_lossy()))), "{s}");
        assert!(s.contains("# kernel.isolcpus: none -> 1-3\n# not a run-time setting: kernel command line: isolcpus="));
        for line in s.lines() {
            assert!(line.is_empty() || line.starts_with('#') || line.starts_with("echo "), "{line}");
        }
        let file = t.0.join("dry-run.sh");
        std::fs::write(&file, &s).unwrap();
        if let Ok(out) = std::process::Command::new("sh").arg("-n").arg(&file).output() {
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        assert_eq!(sh_word("a b'c"), "'a b'\\''c'");
        assert_eq!(sh_word("/sys/x/cpu0"), "/sys/x/cpu0");
    }

    #[test]
    fn json_has_every_row() {
        let t = fake(false);
        let h = host(&t, &[1, 2, 3], Ok(()));
        let rows = check(&h);
        let v: Value = serde_json::from_str(&json_report(&h, &rows)).unwrap();
        assert_eq!(v["shard_cpus"], json!([1, 2, 3]));
        assert_eq!(v["housekeeping_cpus"], json!([0]));
        let settings = v["settings"].as_array().unwrap();
        assert_eq!(settings.len(), NAMES.len());
        let swap = settings.iter().find(|s| s["name"] == "vm.swappiness").unwrap();
        assert_eq!(swap["current"], "60");
        assert_eq!(swap["status"], "off");
        assert_eq!(swap["fix"]["write"][0]["value"], "1");
    }

    #[test]
    fn the_command_line() {
        let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let o = parse(&args("check --json --cpuset 1-3 --root /x")).unwrap();
        assert_eq!((o.mode, o.json, o.cpuset, o.root), (Mode::Check, true, Some(vec![1, 2, 3]), PathBuf::from("/x")));
        let o = parse(&args("--dry-run --cores=2")).unwrap();
        assert_eq!((o.mode, o.cores), (Mode::DryRun, Some(2)));
        assert_eq!(parse(&[]).unwrap().mode, Mode::Apply);
        assert!(matches!(parse(&args("--help")), Err(ParseError::Help)));
        for bad in [
            "--bogus",
            "check --dry-run",
            "--json",
            "--cores 0",
            "--cores x",
            "--cpuset",
            "--cpuset a",
            "run",
            "check check",
            "--json=1 check",
        ] {
            assert!(matches!(parse(&args(bad)), Err(ParseError::Usage(_))), "{bad}");
        }
        assert_eq!(main(&args("--bogus")), EXIT_USAGE);
        assert_eq!(main(&args("--help")), EXIT_OK);
    }

    #[test]
    fn lists_and_masks() {
        assert_eq!(cpu_list("0-3,8"), Some(vec![0, 1, 2, 3, 8]));
        assert_eq!(cpu_list("(null)"), Some(vec![]));
        assert_eq!(fmt_cpus(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(fmt_cpus(&[]), "none");
        assert_eq!(parse_mask("00000000,00000005"), Some(vec![0, 2]));
        assert_eq!(parse_mask("1,00000000"), Some(vec![32]));
        assert_eq!(fmt_mask(&[0, 2]), "5");
        assert_eq!(fmt_mask(&[1, 33]), "2,00000002");
        assert_eq!(fmt_mask(&[]), "0");
        assert_eq!(fmt_bytes(8 << 20), "8 MiB");
        assert_eq!(fmt_bytes(512 << 10), "512 KiB");
        let items = [(0usize, "a".to_string()), (1, "b".to_string()), (2, "a".to_string())];
        assert_eq!(grouped(&items, |c| format!("CPU {}", fmt_cpus(c))), "a on CPU 0,2; b on CPU 1");
    }
}

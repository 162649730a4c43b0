//! The placement plan: which CPU (PU) each shard is pinned to, decided at start-up from the
//! machine's topology ([`Machine`], read through hwloc by `topology`) and the placement flags.
//! [`plan`] is a pure function of the two, so it is tested on synthetic and XML topologies; the
//! server pins shard `i` to `plan.shards[i].pu`, logs the plan, and the introspection answer
//! carries it (`"plan"`); `seqcore plan [flags]` prints it as JSON without starting.
//!
//! The rules, in order:
//! 1. **Candidates** are the PUs of the machine that are in the process's affinity mask, in
//!    `--cpuset` (default: all; a `--cpuset` CPU outside the affinity mask is an error), and on
//!    a node of `--numa_nodes` (default: all). A listed node that does not exist, or that has no
//!    candidate CPUs (a memory-only node, or one `--cpuset` or the affinity mask leaves empty),
//!    is an error.
//! 2. **Order**: candidates sorted by NUMA node, then L3, then physical core, then PU (OS index;
//!    hwloc's logical index for L3 and core; what hwloc does not know sorts last). So the shards
//!    of a node are contiguous, and so are those sharing an L3.
//! 3. **SMT**: with `--smt off` (the default) one PU per physical core, the lowest OS index among
//!    the core's candidates; its other candidates are skipped ("hyper-thread sibling of PU n").
//!    With `--smt on` every candidate may hold a shard (then two shards may share a core).
//! 4. **`--cores N`** takes the first N of that order (an error if there are fewer); the rest
//!    are skipped ("beyond --cores N"). With `--smt on` it takes every core's first PU before
//!    any hyper-thread sibling (still node by node), so two shards share a core only once every
//!    core holds one; the kept PUs stay in rule 2's order.
//! 5. No shard at all, or more than [`SHARDS_MAX`], is an error.
//!
//! Every error names its flag; the server exits with 64 (EX_USAGE) on one, as for any
//! configuration error. Skipped PUs are only the candidates left out by rules 3 and 4. Every
//! shard holds every model (each compiles its own copy), so each entry lists them all.

use crate::config::{ServerConfig, Smt, EXIT_USAGE};
use crate::topology::{Machine, Pu};
use serde_json::{json, Value};
use std::fmt;
use std::io::Write as _;

/// Largest number of shards (the router's `ShardId` is a u16; this keeps the mesh, which has a
/// channel per ordered pair, at a sane size).
pub const SHARDS_MAX: usize = 256;

/// The flags that shape the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanRequest {
    pub cpuset: Option<Vec<usize>>,
    pub numa_nodes: Option<Vec<usize>>,
    pub cores: Option<usize>,
    pub smt: Smt,
    pub shards_max: usize,
    /// The models every shard holds; None: not known (`seqcore plan` without models).
    pub models: Option<Vec<String>>,
}

impl PlanRequest {
    pub fn from_config(config: &ServerConfig) -> PlanRequest {
        PlanRequest {
            cpuset: config.cpuset.clone(),
            numa_nodes: config.numa_nodes.clone(),
            cores: config.cores,
            smt: config.smt,
            shards_max: SHARDS_MAX,
            models: (!config.models.is_empty()).then(|| config.models.iter().map(|m| m.name.clone()).collect()),
        }
    }
}

/// Why a candidate PU holds no shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// `--smt off`: PU `of` holds the shard of this core.
    Sibling { of: usize },
    /// Past the first `--cores N`.
    BeyondCores { cores: usize },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Sibling { of } => write!(f, "hyper-thread sibling of PU {of} (--smt off)"),
            SkipReason::BeyondCores { cores } => write!(f, "beyond --cores {cores}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub pu: usize,
    pub reason: SkipReason,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Shard `i` runs on `shards[i].pu`; the entry says where that PU sits.
    pub shards: Vec<Pu>,
    /// Candidates that hold no shard, by OS index.
    pub skipped: Vec<Skipped>,
    pub smt: Smt,
    /// (node, its CPUs) for every NUMA node of the machine; no CPUs: memory only.
    pub numa_nodes: Vec<(usize, Vec<usize>)>,
    pub models: Option<Vec<String>>,
    /// False when hwloc could not read the topology (each CPU its own core, no NUMA).
    pub from_hwloc: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    CpusetUnavailable { cpu: usize, available: Vec<usize> },
    NumaNodeMissing { node: usize, nodes: Vec<usize> },
    NumaNodeMemoryOnly { node: usize },
    NumaNodeNoCandidates { node: usize, cpus: Vec<usize> },
    TooFewCpus { cores: usize, available: Vec<usize>, smt: Smt },
    TooManyShards { shards: usize, max: usize },
    Empty,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::CpusetUnavailable { cpu, available } => {
                write!(f, "--cpuset: CPU {cpu} is not available to this process (available: {})", list(available))
            }
            PlanError::NumaNodeMissing { node, nodes } if nodes.is_empty() => {
                write!(f, "--numa_nodes: NUMA node {node} does not exist (hwloc could not read the topology)")
            }
            PlanError::NumaNodeMissing { node, nodes } => {
                write!(f, "--numa_nodes: NUMA node {node} does not exist (nodes: {})", list(nodes))
            }
            PlanError::NumaNodeMemoryOnly { node } => {
                write!(f, "--numa_nodes: NUMA node {node} has no CPUs (memory only)")
            }
            PlanError::NumaNodeNoCandidates { node, cpus } => write!(
                f,
                "--numa_nodes: NUMA node {node} has no CPU this process may use in --cpuset (its CPUs: {})",
                list(cpus)
            ),
            PlanError::TooFewCpus { cores, available, smt } => {
                let per = match smt {
                    Smt::Off => "one shard per physical core (--smt off)",
                    Smt::On => "one shard per hyper-thread (--smt on)",
                };
                write!(f, "--cores {cores}: only {} CPU(s) available ({}); {per}", available.len(), list(available))
            }
            PlanError::TooManyShards { shards, max } => write!(
                f,
                "{shards} shards planned, at most {max}: restrict them with --cores, --cpuset or --numa_nodes"
            ),
            PlanError::Empty => f.write_str("no CPU to place a shard on (see --cpuset, --numa_nodes)"),
        }
    }
}

/// The plan for `request` on `machine` (the rules are in the module doc).
pub fn plan(machine: &Machine, request: &PlanRequest) -> Result<Plan, PlanError> {
    if let Some(set) = &request.cpuset {
        if let Some(&cpu) =
            set.iter().find(|c| !machine.affinity.contains(c) || !machine.pus.iter().any(|p| p.os == **c))
        {
            return Err(PlanError::CpusetUnavailable { cpu, available: machine.affinity.clone() });
        }
    }
    let allowed =
        |pu: &Pu| machine.affinity.contains(&pu.os) && request.cpuset.as_ref().is_none_or(|set| set.contains(&pu.os));
    if let Some(nodes) = &request.numa_nodes {
        for &node in nodes {
            let Some(n) = machine.numa_nodes.iter().find(|n| n.os == node) else {
                let nodes = machine.numa_nodes.iter().map(|n| n.os).collect();
                return Err(PlanError::NumaNodeMissing { node, nodes });
            };
            if n.cpus.is_empty() {
                return Err(PlanError::NumaNodeMemoryOnly { node });
            }
            if !machine.pus.iter().any(|p| p.numa_node == Some(node) && allowed(p)) {
                return Err(PlanError::NumaNodeNoCandidates { node, cpus: n.cpus.clone() });
            }
        }
    }
    let mut candidates: Vec<&Pu> = machine
        .pus
        .iter()
        .filter(|&p| allowed(p))
        .filter(|p| request.numa_nodes.as_ref().is_none_or(|nodes| p.numa_node.is_some_and(|n| nodes.contains(&n))))
        .collect();
    candidates.sort_by_key(|p| order_key(p));

    let mut skipped = Vec::new();
    let mut chosen: Vec<&Pu> = Vec::with_capacity(candidates.len());
    for pu in candidates {
        match chosen.last() {
            // Sorted by core, then PU: a core's first candidate is its lowest OS index.
            Some(first) if request.smt == Smt::Off && pu.core.is_some() && same_core(first, pu) => {
                skipped.push(Skipped { pu: pu.os, reason: SkipReason::Sibling { of: first.os } });
            }
            _ => chosen.push(pu),
        }
    }
    if let Some(cores) = request.cores {
        if cores > chosen.len() {
            let mut available: Vec<usize> = chosen.iter().map(|p| p.os).collect();
            available.sort_unstable();
            return Err(PlanError::TooFewCpus { cores, available, smt: request.smt });
        }
        // With --smt on, the cut keeps physical cores before hyper-threads: first every core's
        // first PU (in node order), then the second ones; the kept PUs go back to node order.
        if request.smt == Smt::On {
            let rank: Vec<usize> = (0..chosen.len())
                .map(|i| chosen[..i].iter().filter(|q| q.core.is_some() && same_core(q, chosen[i])).count())
                .collect();
            let mut by_rank: Vec<(usize, &Pu)> = rank.into_iter().zip(chosen).collect();
            by_rank.sort_by_key(|&(r, _)| r);
            chosen = by_rank.into_iter().map(|(_, p)| p).collect();
        }
        for pu in chosen.split_off(cores) {
            skipped.push(Skipped { pu: pu.os, reason: SkipReason::BeyondCores { cores } });
        }
        chosen.sort_by_key(|p| order_key(p));
    }
    if chosen.is_empty() {
        return Err(PlanError::Empty);
    }
    if chosen.len() > request.shards_max {
        return Err(PlanError::TooManyShards { shards: chosen.len(), max: request.shards_max });
    }
    skipped.sort_by_key(|s| s.pu);
    Ok(Plan {
        shards: chosen.into_iter().cloned().collect(),
        skipped,
        smt: request.smt,
        numa_nodes: machine.numa_nodes.iter().map(|n| (n.os, n.cpus.clone())).collect(),
        models: request.models.clone(),
        from_hwloc: machine.from_hwloc,
    })
}

/// Rule 2's order: NUMA node, L3, core, PU; unknown parts last.
fn order_key(p: &Pu) -> (bool, Option<usize>, bool, Option<usize>, bool, Option<usize>, usize) {
    (p.numa_node.is_none(), p.numa_node, p.l3.is_none(), p.l3, p.core.is_none(), p.core, p.os)
}

fn same_core(a: &Pu, b: &Pu) -> bool {
    a.core == b.core && a.numa_node == b.numa_node && a.l3 == b.l3
}

impl Plan {
    /// Shard `i`'s CPU at index `i`.
    pub fn cpus(&self) -> Vec<usize> {
        self.shards.iter().map(|p| p.os).collect()
    }

    /// The plan as JSON (printed by `seqcore plan`, carried by the introspection answer).
    pub fn to_json(&self) -> Value {
        let shards: Vec<Value> = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut v = json!({
                    "shard": i,
                    "pu": p.os,
                    "core": p.core,
                    "l3": p.l3,
                    "numa_node": p.numa_node,
                    "package": p.package,
                });
                if let (Some(models), Some(o)) = (&self.models, v.as_object_mut()) {
                    o.insert("models".into(), json!(models));
                }
                v
            })
            .collect();
        let skipped: Vec<Value> =
            self.skipped.iter().map(|s| json!({ "pu": s.pu, "reason": s.reason.to_string() })).collect();
        let nodes: Vec<Value> = self
            .numa_nodes
            .iter()
            .map(|(node, cpus)| {
                let held: Vec<usize> = self
                    .shards
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.numa_node == Some(*node))
                    .map(|(i, _)| i)
                    .collect();
                json!({ "node": node, "cpus": cpus, "memory_only": cpus.is_empty(), "shards": held })
            })
            .collect();
        let topology = if self.from_hwloc { "hwloc" } else { "affinity mask only (hwloc could not read the topology)" };
        let mut out = json!({
            "smt": self.smt.as_str(),
            "topology": topology,
            "shards": shards,
            "skipped": skipped,
            "numa_nodes": nodes,
        });
        if let (Some(models), Some(o)) = (&self.models, out.as_object_mut()) {
            o.insert("models".into(), json!(models));
        }
        out
    }

    /// The start-up log lines: a summary, one line per shard, one per skipped PU (debug).
    pub fn log(&self) {
        let nodes: Vec<usize> = self.shards.iter().filter_map(|p| p.numa_node).collect();
        let per = match self.smt {
            Smt::Off => "one per physical core (--smt off)",
            Smt::On => "hyper-threads allowed (--smt on)",
        };
        crate::log!(
            Info,
            "plan: {} shard(s) on CPUs {}, {per}; NUMA node(s) {}; {} CPU(s) skipped",
            self.shards.len(),
            list(&self.cpus()),
            list(&nodes),
            self.skipped.len()
        );
        let models = self.models.as_ref().map_or(String::new(), |m| format!(", models {}", m.join(", ")));
        for (i, p) in self.shards.iter().enumerate() {
            crate::log!(
                Info,
                "plan: shard {i} on PU {} (core {}, L3 {}, NUMA node {}, package {}){models}",
                p.os,
                known(p.core),
                known(p.l3),
                known(p.numa_node),
                known(p.package)
            );
        }
        for s in &self.skipped {
            crate::log!(Debug, "plan: PU {} skipped: {}", s.pu, s.reason);
        }
    }
}

fn known(v: Option<usize>) -> String {
    match v {
        Some(v) => v.to_string(),
        None => "?".into(),
    }
}

/// `0-3,8` for [0, 1, 2, 3, 8] (the --cpuset syntax); `-` for none.
pub fn list(items: &[usize]) -> String {
    let mut sorted = items.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { sorted[i].to_string() } else { format!("{}-{}", sorted[i], sorted[j]) });
        i = j + 1;
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

/// `seqcore plan [server flags]`: prints the plan as JSON on stdout; returns the exit code (0;
/// 64 for a bad flag or a plan error; 1 when the affinity mask cannot be read).
///
/// `--synthetic_topology DESC` (hwloc's synthetic syntax, e.g. "pack:2 numa:2 core:8 pu:2") or
/// `--topology_xml FILE` (an `lstopo --of xml` export) plans for that machine instead, every PU
/// in the affinity mask: a plan for a server can be previewed anywhere.
pub fn main(args: &[String]) -> i32 {
    let mut rest = Vec::with_capacity(args.len());
    let mut source: Option<(&str, &str)> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            flag @ ("--synthetic_topology" | "--topology_xml") => {
                let Some(v) = it.next() else {
                    eprintln!("seqcore: {flag} needs a value");
                    return EXIT_USAGE;
                };
                if source.is_some() {
                    eprintln!("seqcore: give one of --synthetic_topology and --topology_xml, once");
                    return EXIT_USAGE;
                }
                source = Some((flag, v.as_str()));
            }
            _ => rest.push(a.clone()),
        }
    }
    let config = match crate::config::parse_plan_args(&rest) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("seqcore: {e}");
            return EXIT_USAGE;
        }
    };
    let machine = match source {
        None => match Machine::read() {
            Ok(m) => m,
            Err(e) => {
                eprintln!("seqcore: {e}");
                return 1;
            }
        },
        Some((flag, v)) => match described_machine(flag, v) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("seqcore: {flag}: {e}");
                return EXIT_USAGE;
            }
        },
    };
    match plan(&machine, &PlanRequest::from_config(&config)) {
        Ok(p) => {
            // A closed stdout (`seqcore plan | head -1`) is not an error of the plan.
            let _ = writeln!(std::io::stdout().lock(), "{:#}", p.to_json());
            0
        }
        Err(e) => {
            eprintln!("seqcore: {e}");
            EXIT_USAGE
        }
    }
}

/// The machine a synthetic description or an XML file describes, every PU allowed.
fn described_machine(flag: &str, value: &str) -> Result<Machine, String> {
    use hwlocality::Topology;
    let builder = Topology::builder();
    let builder = if flag == "--synthetic_topology" {
        builder.from_synthetic(value).map_err(|e| format!("not a valid synthetic topology: {e}"))?
    } else {
        let xml = std::fs::read_to_string(value).map_err(|e| format!("cannot read {value}: {e}"))?;
        builder.from_xml(&xml).map_err(|e| format!("not a valid hwloc XML topology: {e}"))?
    };
    let topology = builder.build().map_err(|e| format!("cannot build the topology: {e}"))?;
    let mut m = Machine::from_topology(&topology, Vec::new());
    m.affinity = m.pus.iter().map(|p| p.os).collect();
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hwlocality::Topology;

    /// Every PU of `topology`, all of them in the affinity mask.
    fn machine_of(topology: &Topology) -> Machine {
        let mut m = Machine::from_topology(topology, Vec::new());
        m.affinity = m.pus.iter().map(|p| p.os).collect();
        m
    }

    fn synthetic(description: &str) -> Machine {
        machine_of(&Topology::builder().from_synthetic(description).unwrap().build().unwrap())
    }

    fn from_xml(xml: &str) -> Machine {
        machine_of(&Topology::builder().from_xml(xml).unwrap().build().unwrap())
    }

    /// A package of a hand-written hwloc XML topology: its NUMA nodes (attached to the package,
    /// so all of the same locality: DRAM, then HBM beside it) and its L3 groups, each a list of
    /// cores, each a list of PU OS indexes.
    struct Pack {
        nodes: Vec<usize>,
        l3s: Vec<Vec<Vec<usize>>>,
    }

    /// hwloc's bitmap syntax: 32-bit words, most significant first (`0x00000f00,0x0000000f`).
    fn bitmap(bits: &[usize]) -> String {
        let mut words = vec![0u32; bits.iter().max().map_or(1, |m| m / 32 + 1)];
        for &b in bits {
            words[b / 32] |= 1 << (b % 32);
        }
        words.iter().rev().map(|w| format!("0x{w:08x}")).collect::<Vec<_>>().join(",")
    }

    /// hwloc 2 XML for `packs`, plus memory-only NUMA nodes attached to the machine (as hwloc
    /// attaches a CXL memory expander: its locality is every CPU).
    fn xml(packs: &[Pack], memory_only: &[usize]) -> String {
        let sets = |cpus: &[usize], nodes: &[usize]| {
            let (c, n) = (bitmap(cpus), bitmap(nodes));
            format!(r#"cpuset="{c}" complete_cpuset="{c}" nodeset="{n}" complete_nodeset="{n}""#)
        };
        let all: Vec<usize> = packs.iter().flat_map(|p| p.l3s.iter().flatten().flatten().copied()).collect();
        let nodes: Vec<usize> =
            packs.iter().flat_map(|p| p.nodes.iter().copied()).chain(memory_only.iter().copied()).collect();
        let mut gp = 1;
        let mut out = String::from(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE topology SYSTEM \"hwloc2.dtd\">\n<topology version=\"2.0\">\n",
        );
        out += &format!(
            "<object type=\"Machine\" os_index=\"0\" {} allowed_cpuset=\"{}\" allowed_nodeset=\"{}\" gp_index=\"1\">\n",
            sets(&all, &nodes),
            bitmap(&all),
            bitmap(&nodes)
        );
        for &m in memory_only {
            gp += 1;
            out += &format!(
                "<object type=\"NUMANode\" os_index=\"{m}\" {} gp_index=\"{gp}\" local_memory=\"1073741824\"/>\n",
                sets(&all, &[m])
            );
        }
        for (i, p) in packs.iter().enumerate() {
            let cpus: Vec<usize> = p.l3s.iter().flatten().flatten().copied().collect();
            let local: Vec<usize> = p.nodes.iter().chain(memory_only).copied().collect();
            gp += 1;
            out += &format!("<object type=\"Package\" os_index=\"{i}\" {} gp_index=\"{gp}\">\n", sets(&cpus, &local));
            for &node in &p.nodes {
                gp += 1;
                out += &format!(
                    "<object type=\"NUMANode\" os_index=\"{node}\" {} gp_index=\"{gp}\" local_memory=\"4294967296\"/>\n",
                    sets(&cpus, &[node])
                );
            }
            let mut core_id = 0;
            for l3 in &p.l3s {
                let l3_cpus: Vec<usize> = l3.iter().flatten().copied().collect();
                gp += 1;
                out += &format!(
                    "<object type=\"L3Cache\" {} gp_index=\"{gp}\" cache_size=\"33554432\" depth=\"3\" \
                     cache_linesize=\"64\" cache_associativity=\"16\" cache_type=\"0\">\n",
                    sets(&l3_cpus, &local)
                );
                for core in l3 {
                    gp += 1;
                    out += &format!(
                        "<object type=\"Core\" os_index=\"{core_id}\" {} gp_index=\"{gp}\">\n",
                        sets(core, &local)
                    );
                    core_id += 1;
                    for &pu in core {
                        gp += 1;
                        out += &format!(
                            "<object type=\"PU\" os_index=\"{pu}\" {} gp_index=\"{gp}\"/>\n",
                            sets(&[pu], &local)
                        );
                    }
                    out += "</object>\n";
                }
                out += "</object>\n";
            }
            out += "</object>\n";
        }
        out + "</object>\n</topology>\n"
    }

    fn request() -> PlanRequest {
        PlanRequest { cpuset: None, numa_nodes: None, cores: None, smt: Smt::Off, shards_max: SHARDS_MAX, models: None }
    }

    fn with(f: impl FnOnce(&mut PlanRequest)) -> PlanRequest {
        let mut r = request();
        f(&mut r);
        r
    }

    fn nodes_of(p: &Plan) -> Vec<Option<usize>> {
        p.shards.iter().map(|s| s.numa_node).collect()
    }

    fn siblings(pairs: &[(usize, usize)]) -> Vec<Skipped> {
        pairs.iter().map(|&(pu, of)| Skipped { pu, reason: SkipReason::Sibling { of } }).collect()
    }

    fn beyond(pus: &[usize], cores: usize) -> Vec<Skipped> {
        pus.iter().map(|&pu| Skipped { pu, reason: SkipReason::BeyondCores { cores } }).collect()
    }

    /// Two packages of two NUMA nodes of 8 cores of 2 hyper-threads; synthetic topologies number
    /// PUs in logical order, so a core's siblings are 2k and 2k+1.
    fn two_sockets() -> Machine {
        synthetic("pack:2 numa:2 core:8 pu:2")
    }

    #[test]
    fn two_sockets_smt_off_one_shard_per_core_grouped_by_node() {
        let m = two_sockets();
        assert_eq!(
            m.numa_nodes.iter().map(|n| (n.os, n.cpus.len())).collect::<Vec<_>>(),
            [(0, 16), (1, 16), (2, 16), (3, 16)]
        );
        let p = plan(&m, &request()).unwrap();
        assert_eq!(p.cpus(), (0..64).step_by(2).collect::<Vec<_>>());
        assert_eq!(nodes_of(&p), (0..32).map(|i| Some(i / 8)).collect::<Vec<_>>());
        assert_eq!(
            p.shards.iter().map(|s| s.package).collect::<Vec<_>>(),
            (0..32).map(|i| Some(i / 16)).collect::<Vec<_>>()
        );
        assert_eq!(p.shards.iter().map(|s| s.core).collect::<Vec<_>>(), (0..32).map(Some).collect::<Vec<_>>());
        let pairs: Vec<(usize, usize)> = (0..32).map(|c| (2 * c + 1, 2 * c)).collect();
        assert_eq!(p.skipped, siblings(&pairs));
        // More shards than the server allows is an error naming the flags that restrict them.
        let e = plan(&m, &with(|r| r.shards_max = 16)).unwrap_err();
        assert_eq!(e, PlanError::TooManyShards { shards: 32, max: 16 });
        assert!(e.to_string().contains("--cores, --cpuset or --numa_nodes"), "{e}");
    }

    #[test]
    fn two_sockets_smt_on_takes_hyper_threads_in_core_order() {
        let m = two_sockets();
        let p = plan(&m, &with(|r| r.smt = Smt::On)).unwrap();
        assert_eq!(p.cpus(), (0..64).collect::<Vec<_>>());
        assert!(p.skipped.is_empty());
        // Cut by --cores, physical cores come before hyper-threads.
        let p = plan(&m, &with(|r| (r.smt, r.numa_nodes, r.cores) = (Smt::On, Some(vec![3]), Some(3)))).unwrap();
        assert_eq!(p.cpus(), [48, 50, 52]);
        assert_eq!(nodes_of(&p), [Some(3); 3]);
        let rest: Vec<usize> = (48..64).filter(|c| ![48, 50, 52].contains(c)).collect();
        assert_eq!(p.skipped, beyond(&rest, 3));
        let p = plan(&m, &with(|r| r.numa_nodes = Some(vec![1, 3]))).unwrap();
        assert_eq!(p.cpus(), (16..32).step_by(2).chain((48..64).step_by(2)).collect::<Vec<_>>());
    }

    #[test]
    fn a_cpuset_that_cuts_a_node_in_half() {
        let m = two_sockets();
        // Node 0 is PUs 0-15, node 1 is 16-31: 8-23 is the second half of one, the first of the other.
        let p = plan(&m, &with(|r| r.cpuset = Some((8..24).collect()))).unwrap();
        assert_eq!(p.cpus(), [8, 10, 12, 14, 16, 18, 20, 22]);
        assert_eq!(nodes_of(&p), [Some(0), Some(0), Some(0), Some(0), Some(1), Some(1), Some(1), Some(1)]);
        assert_eq!(
            p.skipped,
            siblings(&[(9, 8), (11, 10), (13, 12), (15, 14), (17, 16), (19, 18), (21, 20), (23, 22)])
        );
        let p = plan(&m, &with(|r| (r.cpuset, r.numa_nodes) = (Some((8..24).collect()), Some(vec![1])))).unwrap();
        assert_eq!(p.cpus(), [16, 18, 20, 22]);
        // The lowest OS index among the core's candidates: 9 alone stands for core 4.
        let p = plan(&m, &with(|r| r.cpuset = Some(vec![9, 11, 12]))).unwrap();
        assert_eq!(p.cpus(), [9, 11, 12]);
        assert!(p.skipped.is_empty());
        let e = plan(&m, &with(|r| (r.cpuset, r.numa_nodes) = (Some((8..24).collect()), Some(vec![2])))).unwrap_err();
        assert_eq!(e, PlanError::NumaNodeNoCandidates { node: 2, cpus: (32..48).collect() });
        assert_eq!(
            e.to_string(),
            "--numa_nodes: NUMA node 2 has no CPU this process may use in --cpuset (its CPUs: 32-47)"
        );
    }

    /// Two packages of different sizes (4 cores and 2), Linux's numbering (a core's siblings are
    /// n and n+8), and a memory-only node (a CXL expander) attached to the machine.
    fn asymmetric() -> Machine {
        from_xml(&xml(
            &[
                Pack { nodes: vec![0], l3s: vec![vec![vec![0, 8], vec![1, 9], vec![2, 10], vec![3, 11]]] },
                Pack { nodes: vec![1], l3s: vec![vec![vec![4, 12], vec![5, 13]]] },
            ],
            &[2],
        ))
    }

    #[test]
    fn asymmetric_nodes_and_a_memory_only_node() {
        let m = asymmetric();
        let nodes: Vec<(usize, Vec<usize>)> = m.numa_nodes.iter().map(|n| (n.os, n.cpus.clone())).collect();
        assert_eq!(nodes, [(0, vec![0, 1, 2, 3, 8, 9, 10, 11]), (1, vec![4, 5, 12, 13]), (2, vec![])]);
        let p = plan(&m, &request()).unwrap();
        assert_eq!(p.cpus(), [0, 1, 2, 3, 4, 5]);
        assert_eq!(nodes_of(&p), [Some(0), Some(0), Some(0), Some(0), Some(1), Some(1)]);
        assert_eq!(
            p.shards.iter().map(|s| (s.core, s.l3, s.package)).collect::<Vec<_>>(),
            [
                (Some(0), Some(0), Some(0)),
                (Some(1), Some(0), Some(0)),
                (Some(2), Some(0), Some(0)),
                (Some(3), Some(0), Some(0)),
                (Some(4), Some(1), Some(1)),
                (Some(5), Some(1), Some(1)),
            ]
        );
        assert_eq!(p.skipped, siblings(&[(8, 0), (9, 1), (10, 2), (11, 3), (12, 4), (13, 5)]));

        let p = plan(&m, &with(|r| (r.numa_nodes, r.smt) = (Some(vec![1]), Smt::On))).unwrap();
        assert_eq!(p.cpus(), [4, 12, 5, 13]);
        let p = plan(&m, &with(|r| r.cores = Some(5))).unwrap();
        assert_eq!(p.cpus(), [0, 1, 2, 3, 4]);
        let mut skipped = siblings(&[(8, 0), (9, 1), (10, 2), (11, 3), (12, 4), (13, 5)]);
        skipped.insert(0, Skipped { pu: 5, reason: SkipReason::BeyondCores { cores: 5 } });
        assert_eq!(p.skipped, skipped);

        let e = plan(&m, &with(|r| r.numa_nodes = Some(vec![2]))).unwrap_err();
        assert_eq!(e.to_string(), "--numa_nodes: NUMA node 2 has no CPUs (memory only)");
        let e = plan(&m, &with(|r| r.numa_nodes = Some(vec![0, 7]))).unwrap_err();
        assert_eq!(e.to_string(), "--numa_nodes: NUMA node 7 does not exist (nodes: 0-2)");
        let e = plan(&m, &with(|r| r.cores = Some(7))).unwrap_err();
        assert_eq!(e.to_string(), "--cores 7: only 6 CPU(s) available (0-5); one shard per physical core (--smt off)");
        // Six physical cores, then one hyper-thread (of the first core), back in node order.
        assert_eq!(plan(&m, &with(|r| (r.cores, r.smt) = (Some(7), Smt::On))).unwrap().cpus(), [0, 8, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn the_affinity_mask_bounds_the_candidates() {
        let mut m = asymmetric();
        m.affinity = vec![1, 4, 9, 12];
        assert_eq!(plan(&m, &request()).unwrap().cpus(), [1, 4]);
        let e = plan(&m, &with(|r| r.cpuset = Some(vec![1, 2]))).unwrap_err();
        assert_eq!(e.to_string(), "--cpuset: CPU 2 is not available to this process (available: 1,4,9,12)");
        m.affinity.clear();
        assert_eq!(plan(&m, &request()).unwrap_err(), PlanError::Empty);
    }

    /// Sockets whose CPUs interleave (0, 2, … on one, 1, 3, … on the other, as some BIOSes
    /// number them): the order follows the NUMA node, not the CPU number.
    #[test]
    fn interleaved_sockets_are_ordered_by_node() {
        let m = from_xml(&xml(
            &[
                Pack { nodes: vec![0], l3s: vec![vec![vec![0, 4], vec![2, 6]]] },
                Pack { nodes: vec![1], l3s: vec![vec![vec![1, 5], vec![3, 7]]] },
            ],
            &[],
        ));
        let p = plan(&m, &request()).unwrap();
        assert_eq!(p.cpus(), [0, 2, 1, 3]);
        assert_eq!(nodes_of(&p), [Some(0), Some(0), Some(1), Some(1)]);
        assert_eq!(p.skipped, siblings(&[(4, 0), (5, 1), (6, 2), (7, 3)]));
        assert_eq!(plan(&m, &with(|r| r.cores = Some(2))).unwrap().cpus(), [0, 2]);
        assert_eq!(plan(&m, &with(|r| r.smt = Smt::On)).unwrap().cpus(), [0, 4, 2, 6, 1, 5, 3, 7]);
    }

    /// One NUMA node, two L3 groups of four cores (as AMD's CCXs): shards fill one L3 first.
    #[test]
    fn l3_groups_with_cores_cut() {
        let m = synthetic("pack:1 l3:2 core:4 pu:2");
        let p = plan(&m, &with(|r| r.cores = Some(6))).unwrap();
        assert_eq!(p.cpus(), [0, 2, 4, 6, 8, 10]);
        assert_eq!(
            p.shards.iter().map(|s| s.l3).collect::<Vec<_>>(),
            [Some(0), Some(0), Some(0), Some(0), Some(1), Some(1)]
        );
        let mut skipped = siblings(&[(1, 0), (3, 2), (5, 4), (7, 6), (9, 8), (11, 10), (13, 12), (15, 14)]);
        skipped.insert(6, Skipped { pu: 12, reason: SkipReason::BeyondCores { cores: 6 } });
        skipped.insert(8, Skipped { pu: 14, reason: SkipReason::BeyondCores { cores: 6 } });
        assert_eq!(p.skipped, skipped);
    }

    /// Two NUMA nodes of the same locality in each package (DRAM and HBM, as on Xeon Max in flat
    /// mode): the lower index holds the CPUs, the other is memory only.
    #[test]
    fn memory_only_nodes_beside_dram() {
        let m = from_xml(&xml(
            &[
                Pack { nodes: vec![0, 1], l3s: vec![vec![vec![0], vec![1]]] },
                Pack { nodes: vec![2, 3], l3s: vec![vec![vec![2], vec![3]]] },
            ],
            &[],
        ));
        let nodes: Vec<(usize, Vec<usize>)> = m.numa_nodes.iter().map(|n| (n.os, n.cpus.clone())).collect();
        assert_eq!(nodes, [(0, vec![0, 1]), (1, vec![]), (2, vec![2, 3]), (3, vec![])]);
        let p = plan(&m, &request()).unwrap();
        assert_eq!(p.cpus(), [0, 1, 2, 3]);
        assert_eq!(nodes_of(&p), [Some(0), Some(0), Some(2), Some(2)]);
        assert_eq!(plan(&m, &with(|r| r.numa_nodes = Some(vec![2]))).unwrap().cpus(), [2, 3]);
        assert_eq!(
            plan(&m, &with(|r| r.numa_nodes = Some(vec![3]))).unwrap_err(),
            PlanError::NumaNodeMemoryOnly { node: 3 }
        );
    }

    /// This machine (the CI VM: 2 vCPUs, no SMT): one shard per physical core of the affinity
    /// mask; without SMT that is the whole mask, in order, as before the plan.
    #[test]
    fn this_machine() {
        let m = Machine::read().unwrap();
        assert!(m.from_hwloc);
        let p = plan(&m, &request()).unwrap();
        let mut cores: Vec<Option<usize>> =
            m.pus.iter().filter(|u| m.affinity.contains(&u.os)).map(|u| u.core).collect();
        cores.sort_unstable();
        cores.dedup();
        assert_eq!(p.shards.len(), cores.len(), "{p:?}");
        if cores.len() == m.affinity.len() {
            let mut cpus = p.cpus();
            cpus.sort_unstable();
            assert_eq!(cpus, m.affinity);
            assert!(p.skipped.is_empty());
        }
        assert_eq!(plan(&m, &with(|r| r.cores = Some(1))).unwrap().shards.len(), 1);
    }

    #[test]
    fn without_hwloc_every_cpu_is_its_own_core() {
        let m = Machine::flat(vec![0, 1, 2]);
        assert_eq!(plan(&m, &request()).unwrap().cpus(), [0, 1, 2]);
        let e = plan(&m, &with(|r| r.numa_nodes = Some(vec![0]))).unwrap_err();
        assert_eq!(e.to_string(), "--numa_nodes: NUMA node 0 does not exist (hwloc could not read the topology)");
    }

    #[test]
    fn the_json_names_every_level_and_the_models() {
        let m = asymmetric();
        let p = plan(&m, &with(|r| r.models = Some(vec!["a".into(), "b".into()]))).unwrap();
        let j = p.to_json();
        assert_eq!(
            j["shards"][4],
            json!({"shard": 4, "pu": 4, "core": 4, "l3": 1, "numa_node": 1, "package": 1, "models": ["a", "b"]})
        );
        assert_eq!(j["skipped"][0], json!({"pu": 8, "reason": "hyper-thread sibling of PU 0 (--smt off)"}));
        assert_eq!(
            j["numa_nodes"][1],
            json!({"node": 1, "cpus": [4, 5, 12, 13], "memory_only": false, "shards": [4, 5]})
        );
        assert_eq!(j["numa_nodes"][2], json!({"node": 2, "cpus": [], "memory_only": true, "shards": []}));
        assert_eq!((&j["smt"], &j["models"]), (&json!("off"), &json!(["a", "b"])));
        let j = plan(&m, &request()).unwrap().to_json();
        assert!(j.get("models").is_none() && j["shards"][0].get("models").is_none(), "{j}");
    }

    #[test]
    fn lists_are_written_as_cpusets() {
        assert_eq!(list(&[8, 0, 1, 2, 3]), "0-3,8");
        assert_eq!(list(&[1, 3]), "1,3");
        assert_eq!(list(&[]), "-");
    }
}

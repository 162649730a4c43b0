//! Where each shard's CPU sits in the machine (through hwloc): its physical core, package and
//! NUMA node. Start-up logs it, warns when two shards share a physical core (hyper-threads
//! compete for the same execution units, which halves per-shard throughput), and the
//! introspection answer reports it, so a NUMA-tuned deployment can be checked, not assumed.
//!
//! Memory locality needs no binding call: each shard thread is pinned before it compiles its
//! models or allocates sequence state, so Linux's default first-touch policy places that memory
//! on the shard's own NUMA node.
//!
//! [`Machine`] is the same view as plain data (every PU with its core, L3, NUMA node and package;
//! every NUMA node, memory-only ones included), read once at start-up for the placement plan
//! (`src/plan.rs`), which decides the shard CPUs from it.

use hwlocality::object::types::ObjectType;
use hwlocality::object::TopologyObject;
use hwlocality::Topology;

/// One hardware thread (hwloc's PU).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pu {
    /// The OS index: the CPU number of `taskset`, `/proc/cpuinfo` and `--cpuset`.
    pub os: usize,
    /// hwloc's logical index of the physical core holding it: unique in the machine (a core's OS
    /// index repeats in every package). None when hwloc knows no core: the PU is its own core.
    pub core: Option<usize>,
    /// hwloc's logical index of the L3 cache it shares, if any.
    pub l3: Option<usize>,
    /// OS index of its NUMA node (its nearest one, see [`Machine::from_topology`]).
    pub numa_node: Option<usize>,
    /// OS index of its package (socket).
    pub package: Option<usize>,
}

/// One NUMA node and the PUs whose node it is; none for a memory-only node (CXL, HBM, PMEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumaNode {
    pub os: usize,
    pub cpus: Vec<usize>,
}

/// What the placement plan needs to know of the machine, as plain data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// Every PU hwloc reports, by OS index.
    pub pus: Vec<Pu>,
    /// Every NUMA node, by OS index.
    pub numa_nodes: Vec<NumaNode>,
    /// The CPUs this process may run on (its affinity mask, read before any thread pins itself).
    pub affinity: Vec<usize>,
    /// False when hwloc could not read the topology ([`Machine::flat`]).
    pub from_hwloc: bool,
}

impl Machine {
    /// This machine, as this process sees it. Without hwloc's view, every CPU of the affinity
    /// mask is its own core and nothing is known of NUMA ([`Machine::flat`]).
    pub fn read() -> Result<Machine, String> {
        let mut affinity: Vec<usize> = core_affinity::get_core_ids()
            .ok_or("cannot read the process's CPU affinity")?
            .into_iter()
            .map(|c| c.id)
            .collect();
        affinity.sort_unstable();
        Ok(match Topology::new() {
            Ok(topology) => Machine::from_topology(&topology, affinity),
            Err(_) => Machine::flat(affinity),
        })
    }

    /// `topology` as plain data. A PU's NUMA node is the node nearest to it: of the nodes whose
    /// locality (cpuset) holds the PU, the one with the fewest CPUs, the lowest OS index on a tie.
    /// hwloc attaches a node without CPUs (CXL, HBM, PMEM) beside or above the CPUs near it, so it
    /// is never nearest and gets no CPUs: memory only. (HBM beside DRAM with the same locality:
    /// the lower index wins, which is DRAM on Linux, as its numbering has it.)
    pub fn from_topology(topology: &Topology, affinity: Vec<usize>) -> Machine {
        let mut localities: Vec<(usize, Vec<usize>)> = topology
            .objects_with_type(ObjectType::NUMANode)
            .filter_map(|n| Some((n.os_index()?, cpus_of(n))))
            .collect();
        localities.sort_unstable();
        let mut numa_nodes: Vec<NumaNode> =
            localities.iter().map(|(os, _)| NumaNode { os: *os, cpus: Vec::new() }).collect();
        let mut pus = Vec::new();
        for pu in topology.objects_with_type(ObjectType::PU) {
            let Some(os) = pu.os_index() else { continue };
            let nearest = localities
                .iter()
                .enumerate()
                .filter(|(_, (_, cpus))| cpus.binary_search(&os).is_ok())
                .min_by_key(|(_, (node, cpus))| (cpus.len(), *node))
                .map(|(i, _)| i);
            if let Some(i) = nearest {
                numa_nodes[i].cpus.push(os);
            }
            let index = |t: ObjectType| pu.first_ancestor_with_type(t).map(TopologyObject::logical_index);
            pus.push(Pu {
                os,
                core: index(ObjectType::Core),
                l3: index(ObjectType::L3Cache),
                numa_node: nearest.map(|i| localities[i].0),
                package: pu
                    .first_ancestor_with_type(ObjectType::Package)
                    .map(|p| p.os_index().unwrap_or(p.logical_index())),
            });
        }
        pus.sort_unstable_by_key(|p| p.os);
        for n in &mut numa_nodes {
            n.cpus.sort_unstable();
        }
        Machine { pus, numa_nodes, affinity, from_hwloc: true }
    }

    /// A machine known only by its affinity mask: each CPU its own core, no L3, NUMA node or
    /// package.
    pub fn flat(affinity: Vec<usize>) -> Machine {
        let pus = affinity.iter().map(|&os| Pu { os, core: None, l3: None, numa_node: None, package: None }).collect();
        Machine { pus, numa_nodes: Vec::new(), affinity, from_hwloc: false }
    }
}

/// The OS indexes of the CPUs in `object`'s cpuset, ascending.
fn cpus_of(object: &TopologyObject) -> Vec<usize> {
    object.cpuset().map(|set| set.iter_set().map(usize::from).collect()).unwrap_or_default()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuPlace {
    pub cpu: usize,
    /// OS index of the physical core holding this CPU.
    pub core: Option<usize>,
    pub package: Option<usize>,
    pub numa_node: Option<usize>,
}

/// Describes `cpus`; None when hwloc cannot read the topology (then nothing is assumed).
pub fn describe(cpus: &[usize]) -> Option<Vec<CpuPlace>> {
    let topology = Topology::new().ok()?;
    let places = cpus
        .iter()
        .map(|&cpu| {
            let pu = topology.pu_with_os_index(cpu);
            let ancestor = |t: ObjectType| {
                pu.and_then(|pu| pu.ancestors().find(|a| a.object_type() == t)).and_then(|a| a.os_index())
            };
            let numa_node = pu.and_then(|pu| pu.nodeset()).and_then(|set| set.first_set()).map(usize::from);
            CpuPlace { cpu, core: ancestor(ObjectType::Core), package: ancestor(ObjectType::Package), numa_node }
        })
        .collect();
    Some(places)
}

/// Pairs of CPUs in `places` that are hyper-thread siblings (same package and physical core).
pub fn shared_cores(places: &[CpuPlace]) -> Vec<(usize, usize)> {
    let mut pairs = Vec::new();
    for (i, a) in places.iter().enumerate() {
        for b in &places[i + 1..] {
            if a.core.is_some() && a.core == b.core && a.package == b.package {
                pairs.push((a.cpu, b.cpu));
            }
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siblings_are_found_by_core_and_package() {
        let p = |cpu, core, package| CpuPlace { cpu, core: Some(core), package: Some(package), numa_node: Some(0) };
        assert_eq!(shared_cores(&[p(0, 0, 0), p(1, 1, 0), p(2, 0, 0), p(3, 0, 1)]), vec![(0, 2)]);
    }

    #[test]
    fn this_machine_is_described() {
        let cpus: Vec<usize> = core_affinity::get_core_ids().unwrap().into_iter().map(|c| c.id).collect();
        let places = describe(&cpus).expect("hwloc reads the topology");
        assert_eq!(places.len(), cpus.len());
        assert!(places.iter().all(|p| p.core.is_some() && p.numa_node.is_some()), "{places:?}");
    }
}

//! Where each shard's CPU sits in the machine (through hwloc): its physical core, package and
//! NUMA node. Start-up logs it, warns when two shards share a physical core (hyper-threads
//! compete for the same execution units, which halves per-shard throughput), and the
//! introspection answer reports it, so a NUMA-tuned deployment can be checked, not assumed.
//!
//! Memory locality needs no binding call: each shard thread is pinned before it compiles its
//! models or allocates sequence state, so Linux's default first-touch policy places that memory
//! on the shard's own NUMA node.

use hwlocality::object::types::ObjectType;
use hwlocality::Topology;

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

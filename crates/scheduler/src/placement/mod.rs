//! Placement: which node a VM goes to.
//!
//! A [`Placer`] holds the nodes that can take VMs (active ones) and what is placed on
//! each, and answers [`Placer::place`] with a node or with the reasons no node fits.
//! It is pure and in memory; the service persists its decisions.
//!
//! How it stays fast with many nodes: nodes are grouped in *classes* by what static
//! requirements look at in hardware (CPU architecture, vendor, features; GPU models), so
//! a VM's CPU and GPU requirements are checked once per class, not once per node. Inside
//! a class, nodes are indexed by free vCPUs, then by free memory, so the best node for a
//! VM is found by one ordered lookup per distinct free-vCPU value (O(B log n), B ≤ the
//! largest node's vCPUs) instead of a scan. Requirements that name nodes (node hash,
//! owner, address regex) narrow the candidates first: by hash, by an owner index, and by
//! a per-pattern cache of compiled regexes and the nodes they match. Only a VM that fits
//! nowhere costs a pass over all nodes, to say why.

pub mod bench;
mod requirements;
#[cfg(test)]
mod tests;

use aleph_protocol::scheduler::{CpuProperties, Gpu, NodeResources};
use regex::Regex;
use requirements::{Misfit, assign_gpus, cpu_matches, names_misfit};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// A node placement may use.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub hash: String,
    /// The address that registered it.
    pub owner: String,
    /// Its URL.
    pub address: String,
    /// What it offers VMs in all (not what is free: the placer accounts for that).
    pub capacity: NodeResources,
}

/// What a VM needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmDemand {
    pub vm_hash: String,
    pub vcpus: u64,
    pub memory_mib: u64,
    pub disk_mib: u64,
    pub requirements: Requirements,
}

/// A message's `requirements`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Requirements {
    #[serde(default)]
    pub cpu: Option<CpuRequirement>,
    #[serde(default)]
    pub node: Option<NodeRequirement>,
    #[serde(default)]
    pub gpu: Vec<GpuRequirement>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuRequirement {
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub vendor: Option<String>,
    #[serde(default)]
    pub features: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeRequirement {
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub address_regex: Option<String>,
    #[serde(default)]
    pub node_hash: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuRequirement {
    #[serde(default)]
    pub vendor: Option<String>,
    #[serde(default)]
    pub device_name: Option<String>,
    #[serde(default)]
    pub device_class: Option<String>,
    #[serde(default)]
    pub device_id: Option<String>,
    /// Our addition: the least VRAM, MiB.
    #[serde(default)]
    pub vram_mib: Option<u64>,
}

impl Requirements {
    /// The `requirements` of a PROGRAM or INSTANCE content (none: no requirements).
    pub fn from_content(content: &Value) -> Result<Self, String> {
        match content.get("requirements") {
            None | Some(Value::Null) => Ok(Self::default()),
            Some(value) => {
                serde_json::from_value(value.clone()).map_err(|e| format!("requirements: {e}"))
            }
        }
    }
}

/// How to choose among the nodes that fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// The fullest node that fits: keeps large holes for large VMs.
    #[default]
    BinPack,
    /// The emptiest node: spreads load and the damage of a node failing.
    Spread,
}

/// Why a VM could not be placed: one line per kind of misfit, with how many nodes it
/// ruled out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no node fits: {}", .reasons.join("; "))]
pub struct Unplaceable {
    pub reasons: Vec<String>,
}

/// What a node has free now: capacity less what is placed on it (never below zero: an
/// [`Placer::assign`] of an earlier decision may overcommit a node that shrank).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Free {
    pub vcpus: u64,
    pub memory_mib: u64,
    pub disk_mib: u64,
    /// GPUs no VM holds.
    pub gpus: Vec<Gpu>,
}

/// Nodes, and what is placed on each.
#[derive(Debug, Default)]
pub struct Placer {
    policy: Policy,
    /// Node states by slot; a removed node leaves a vacant slot for the next one.
    slots: Vec<Option<NodeState>>,
    vacant: Vec<u32>,
    by_hash: HashMap<String, u32>,
    /// Lowercased owner address → its nodes.
    by_owner: HashMap<String, BTreeSet<u32>>,
    classes: Vec<Class>,
    class_of: HashMap<ClassKey, u32>,
    placed: HashMap<String, PlacedVm>,
    /// `address_regex` pattern → compiled, with the nodes it matched at `generation`.
    regexes: HashMap<String, CachedRegex>,
    /// Raised whenever the set of nodes or an address changes (invalidates `regexes`).
    generation: u64,
    /// Sums over nodes, for normalizing the fit score.
    total_vcpus: u64,
    total_memory_mib: u64,
}

#[derive(Debug)]
struct NodeState {
    node: Node,
    class: u32,
    used_vcpus: u64,
    used_memory_mib: u64,
    used_disk_mib: u64,
    gpu_taken: Vec<bool>,
    vms: HashSet<String>,
}

impl NodeState {
    fn free_vcpus(&self) -> u64 {
        self.node.capacity.vcpus.saturating_sub(self.used_vcpus)
    }
    fn free_memory(&self) -> u64 {
        self.node
            .capacity
            .memory_mib
            .saturating_sub(self.used_memory_mib)
    }
    fn free_disk(&self) -> u64 {
        self.node
            .capacity
            .disk_mib
            .saturating_sub(self.used_disk_mib)
    }
    /// Whether free capacity takes `vm` (requirements aside); the first shortfall if not.
    fn capacity_misfit(&self, vm: &VmDemand) -> Option<Misfit> {
        if self.free_vcpus() < vm.vcpus {
            Some(Misfit::Vcpus)
        } else if self.free_memory() < vm.memory_mib {
            Some(Misfit::Memory)
        } else if self.free_disk() < vm.disk_mib {
            Some(Misfit::Disk)
        } else if !vm.requirements.gpu.is_empty()
            && assign_gpus(
                &self.node.capacity.gpus,
                &self.gpu_taken,
                &vm.requirements.gpu,
            )
            .is_none()
        {
            Some(Misfit::GpusTaken)
        } else {
            None
        }
    }
}

/// Nodes alike in what CPU and GPU requirements look at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClassKey {
    architecture: String,
    vendor: String,
    features: Vec<String>,
    /// (vendor, device_name, device_class, device_id, vram_mib) of each GPU, sorted.
    gpus: Vec<(String, String, String, String, u64)>,
}

impl ClassKey {
    fn of(resources: &NodeResources) -> Self {
        let mut features: Vec<String> = resources
            .cpu
            .features
            .iter()
            .map(|f| f.to_ascii_lowercase())
            .collect();
        features.sort();
        features.dedup();
        let mut gpus: Vec<_> = resources
            .gpus
            .iter()
            .map(|g| {
                (
                    g.vendor.to_ascii_lowercase(),
                    g.device_name.to_ascii_lowercase(),
                    g.device_class.to_ascii_lowercase(),
                    g.device_id.to_ascii_lowercase(),
                    g.vram_mib,
                )
            })
            .collect();
        gpus.sort();
        Self {
            architecture: resources.cpu.architecture.to_ascii_lowercase(),
            vendor: resources.cpu.vendor.to_ascii_lowercase(),
            features,
            gpus,
        }
    }
}

#[derive(Debug)]
struct Class {
    /// A node's CPU and GPUs as the key describes them, to match requirements against.
    cpu: CpuProperties,
    gpus: Vec<Gpu>,
    members: usize,
    /// Free memory → how many members have that much: the most free memory in the
    /// class in O(log n), to skip a class or bound a search.
    free_memory: BTreeMap<u64, u32>,
    /// free vCPUs → (free memory, slot) of the class's nodes.
    index: BTreeMap<u64, BTreeSet<(u64, u32)>>,
}

impl Class {
    /// Whether the CPU and GPU requirements of `vm` can be met by this class's hardware.
    fn admits(&self, req: &Requirements) -> bool {
        req.cpu.as_ref().is_none_or(|c| cpu_matches(&self.cpu, c))
            && (req.gpu.is_empty() || assign_gpus(&self.gpus, &[], &req.gpu).is_some())
    }
}

#[derive(Debug)]
struct PlacedVm {
    slot: u32,
    demand: VmDemand,
    /// Indices in the node's `capacity.gpus` this VM holds.
    gpus: Vec<usize>,
}

#[derive(Debug)]
struct CachedRegex {
    regex: Result<Regex, String>,
    generation: u64,
    matches: Arc<Vec<u32>>,
}

/// Orders candidates: lower is better.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rank {
    /// 1 for a node with GPUs chosen for a VM that wants none: such nodes are kept for
    /// the VMs that need them while other nodes fit.
    tier: u8,
    score: f64,
    slot: u32,
}

impl Rank {
    fn better_than(&self, other: &Rank) -> bool {
        self.tier
            .cmp(&other.tier)
            .then(self.score.total_cmp(&other.score))
            .then(self.slot.cmp(&other.slot))
            .is_lt()
    }
}

impl Placer {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            ..Default::default()
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Changes the policy for the placements to come (what is placed stays).
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// Adds a node or updates it (capacity, owner, address); what is placed on it stays,
    /// GPUs included where the node still has a matching one.
    pub fn upsert_node(&mut self, node: Node) {
        if let Some(&slot) = self.by_hash.get(&node.hash) {
            self.unindex(slot);
            let state = self.slots[slot as usize].as_mut().expect("indexed slot");
            let old = std::mem::replace(&mut state.node, node);
            self.total_vcpus = self.total_vcpus - old.capacity.vcpus + state.node.capacity.vcpus;
            self.total_memory_mib =
                self.total_memory_mib - old.capacity.memory_mib + state.node.capacity.memory_mib;
            if !old.owner.eq_ignore_ascii_case(&state.node.owner) {
                let new_owner = state.node.owner.to_ascii_lowercase();
                self.forget_owner(&old.owner, slot);
                self.by_owner.entry(new_owner).or_default().insert(slot);
            }
            if old.address != self.slots[slot as usize].as_ref().unwrap().node.address {
                self.generation += 1;
            }
            if old.capacity.gpus
                != self.slots[slot as usize]
                    .as_ref()
                    .unwrap()
                    .node
                    .capacity
                    .gpus
            {
                self.reassign_gpus(slot);
            }
            let key = ClassKey::of(&self.slots[slot as usize].as_ref().unwrap().node.capacity);
            let class = self.class_for(key);
            let state = self.slots[slot as usize].as_mut().unwrap();
            if state.class != class {
                self.classes[state.class as usize].members -= 1;
                self.classes[class as usize].members += 1;
                state.class = class;
            }
            self.index(slot);
            return;
        }
        let slot = match self.vacant.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        let class = self.class_for(ClassKey::of(&node.capacity));
        self.classes[class as usize].members += 1;
        self.total_vcpus += node.capacity.vcpus;
        self.total_memory_mib += node.capacity.memory_mib;
        self.by_hash.insert(node.hash.clone(), slot);
        self.by_owner
            .entry(node.owner.to_ascii_lowercase())
            .or_default()
            .insert(slot);
        self.generation += 1;
        self.slots[slot as usize] = Some(NodeState {
            gpu_taken: vec![false; node.capacity.gpus.len()],
            node,
            class,
            used_vcpus: 0,
            used_memory_mib: 0,
            used_disk_mib: 0,
            vms: HashSet::new(),
        });
        self.index(slot);
    }

    /// Removes a node (lost or dropped) and returns the VMs that were on it, now unplaced.
    pub fn remove_node(&mut self, hash: &str) -> Vec<String> {
        let Some(slot) = self.by_hash.remove(hash) else {
            return Vec::new();
        };
        self.unindex(slot);
        let state = self.slots[slot as usize].take().expect("known slot");
        self.vacant.push(slot);
        self.classes[state.class as usize].members -= 1;
        self.total_vcpus -= state.node.capacity.vcpus;
        self.total_memory_mib -= state.node.capacity.memory_mib;
        self.forget_owner(&state.node.owner, slot);
        self.generation += 1;
        let mut orphans: Vec<String> = state.vms.into_iter().collect();
        orphans.sort();
        for vm in &orphans {
            self.placed.remove(vm);
        }
        orphans
    }

    /// Chooses a node for `vm` and records it there. A VM placed before is released
    /// first: placing again moves it, and one that then fits nowhere is left unplaced
    /// (its old node is in neither answer; the caller knew it).
    pub fn place(&mut self, vm: &VmDemand) -> Result<String, Unplaceable> {
        self.release(&vm.vm_hash);
        let regex = match self.address_regex(vm) {
            Ok(regex) => regex,
            Err(reason) => {
                return Err(Unplaceable {
                    reasons: vec![reason],
                });
            }
        };
        let found = self.find(
            vm,
            regex.as_ref().map(|(re, matches)| (re, matches.as_slice())),
        );
        match found {
            Some(slot) => {
                self.assign_slot(vm, slot);
                Ok(self.slots[slot as usize]
                    .as_ref()
                    .unwrap()
                    .node
                    .hash
                    .clone())
            }
            None => Err(self.explain(vm, regex.as_ref().map(|(_, matches)| matches.as_slice()))),
        }
    }

    /// Records `vm` on `node` (a placement made earlier, restored) without checking that
    /// it fits; false if the node is unknown. A VM placed before is released first.
    pub fn assign(&mut self, vm: &VmDemand, node: &str) -> bool {
        let Some(&slot) = self.by_hash.get(node) else {
            return false;
        };
        self.release(&vm.vm_hash);
        self.assign_slot(vm, slot);
        true
    }

    /// Frees what `vm_hash` held; returns the node it was on.
    pub fn release(&mut self, vm_hash: &str) -> Option<String> {
        let placed = self.placed.remove(vm_hash)?;
        let slot = placed.slot;
        self.unindex(slot);
        let state = self.slots[slot as usize]
            .as_mut()
            .expect("placed on a known slot");
        state.used_vcpus -= placed.demand.vcpus;
        state.used_memory_mib -= placed.demand.memory_mib;
        state.used_disk_mib -= placed.demand.disk_mib;
        for g in placed.gpus {
            state.gpu_taken[g] = false;
        }
        state.vms.remove(vm_hash);
        let hash = state.node.hash.clone();
        self.index(slot);
        Some(hash)
    }

    pub fn node_of(&self, vm_hash: &str) -> Option<&str> {
        let placed = self.placed.get(vm_hash)?;
        Some(&self.slots[placed.slot as usize].as_ref()?.node.hash)
    }

    /// The GPUs `vm_hash` holds, as indices in its node's `capacity.gpus`.
    pub fn gpus_of(&self, vm_hash: &str) -> Option<&[usize]> {
        self.placed.get(vm_hash).map(|p| p.gpus.as_slice())
    }

    /// The nodes, in no particular order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.slots.iter().flatten().map(|s| &s.node)
    }

    pub fn node(&self, hash: &str) -> Option<&Node> {
        self.state(hash).map(|s| &s.node)
    }

    /// What `hash` has free now.
    pub fn free_of(&self, hash: &str) -> Option<Free> {
        let state = self.state(hash)?;
        Some(Free {
            vcpus: state.free_vcpus(),
            memory_mib: state.free_memory(),
            disk_mib: state.free_disk(),
            gpus: state
                .node
                .capacity
                .gpus
                .iter()
                .zip(&state.gpu_taken)
                .filter(|(_, taken)| !**taken)
                .map(|(g, _)| g.clone())
                .collect(),
        })
    }

    /// The VMs placed on `hash`, sorted.
    pub fn placed_on(&self, hash: &str) -> Vec<String> {
        let mut vms: Vec<String> = self
            .state(hash)
            .map(|s| s.vms.iter().cloned().collect())
            .unwrap_or_default();
        vms.sort();
        vms
    }

    pub fn node_count(&self) -> usize {
        self.by_hash.len()
    }

    pub fn placed_count(&self) -> usize {
        self.placed.len()
    }

    fn state(&self, hash: &str) -> Option<&NodeState> {
        self.slots[*self.by_hash.get(hash)? as usize].as_ref()
    }

    fn class_for(&mut self, key: ClassKey) -> u32 {
        if let Some(&class) = self.class_of.get(&key) {
            return class;
        }
        let class = self.classes.len() as u32;
        self.classes.push(Class {
            cpu: CpuProperties {
                architecture: key.architecture.clone(),
                vendor: key.vendor.clone(),
                features: key.features.clone(),
            },
            gpus: key
                .gpus
                .iter()
                .map(
                    |(vendor, device_name, device_class, device_id, vram_mib)| Gpu {
                        vendor: vendor.clone(),
                        device_name: device_name.clone(),
                        device_class: device_class.clone(),
                        device_id: device_id.clone(),
                        vram_mib: *vram_mib,
                    },
                )
                .collect(),
            members: 0,
            free_memory: BTreeMap::new(),
            index: BTreeMap::new(),
        });
        self.class_of.insert(key, class);
        class
    }

    fn forget_owner(&mut self, owner: &str, slot: u32) {
        let owner = owner.to_ascii_lowercase();
        if let Some(slots) = self.by_owner.get_mut(&owner) {
            slots.remove(&slot);
            if slots.is_empty() {
                self.by_owner.remove(&owner);
            }
        }
    }

    fn index(&mut self, slot: u32) {
        let state = self.slots[slot as usize].as_ref().expect("live slot");
        let class = &mut self.classes[state.class as usize];
        *class.free_memory.entry(state.free_memory()).or_default() += 1;
        class
            .index
            .entry(state.free_vcpus())
            .or_default()
            .insert((state.free_memory(), slot));
    }

    fn unindex(&mut self, slot: u32) {
        let state = self.slots[slot as usize].as_ref().expect("live slot");
        let class = &mut self.classes[state.class as usize];
        let memory = state.free_memory();
        let count = class.free_memory.get_mut(&memory).expect("counted node");
        *count -= 1;
        if *count == 0 {
            class.free_memory.remove(&memory);
        }
        let index = &mut class.index;
        let vcpus = state.free_vcpus();
        let bucket = index.get_mut(&vcpus).expect("indexed node");
        let removed = bucket.remove(&(state.free_memory(), slot));
        debug_assert!(removed, "node indexed under its free amounts");
        if bucket.is_empty() {
            index.remove(&vcpus);
        }
    }

    fn assign_slot(&mut self, vm: &VmDemand, slot: u32) {
        self.unindex(slot);
        let state = self.slots[slot as usize].as_mut().expect("live slot");
        state.used_vcpus += vm.vcpus;
        state.used_memory_mib += vm.memory_mib;
        state.used_disk_mib += vm.disk_mib;
        let gpus = take_gpus(state, &vm.requirements.gpu);
        state.vms.insert(vm.vm_hash.clone());
        self.placed.insert(
            vm.vm_hash.clone(),
            PlacedVm {
                slot,
                demand: vm.clone(),
                gpus,
            },
        );
        self.index(slot);
    }

    /// After a node's GPU list changed: gives its VMs GPUs again from the new list, in
    /// VM hash order (a VM that finds none holds none).
    fn reassign_gpus(&mut self, slot: u32) {
        let state = self.slots[slot as usize].as_mut().expect("live slot");
        state.gpu_taken = vec![false; state.node.capacity.gpus.len()];
        let mut vms: Vec<String> = state.vms.iter().cloned().collect();
        vms.sort();
        for vm in vms {
            let placed = self.placed.get_mut(&vm).expect("a node's VM is placed");
            placed.gpus = take_gpus(state, &placed.demand.requirements.gpu);
        }
    }

    /// The compiled `address_regex` of `vm` and the nodes it matches, from the cache;
    /// an invalid pattern is the reason the VM cannot be placed.
    #[allow(clippy::type_complexity)]
    fn address_regex(&mut self, vm: &VmDemand) -> Result<Option<(Regex, Arc<Vec<u32>>)>, String> {
        let Some(pattern) = vm
            .requirements
            .node
            .as_ref()
            .and_then(|n| n.address_regex.as_ref())
        else {
            return Ok(None);
        };
        // A bounded cache: patterns are few in practice; a flood of distinct ones starts over.
        if self.regexes.len() >= 4096 && !self.regexes.contains_key(pattern) {
            self.regexes.clear();
        }
        let generation = self.generation;
        let cached = self
            .regexes
            .entry(pattern.clone())
            .or_insert_with(|| CachedRegex {
                regex: Regex::new(pattern)
                    .map_err(|e| format!("invalid address_regex {pattern:?}: {e}")),
                generation: u64::MAX,
                matches: Arc::default(),
            });
        let regex = cached.regex.clone()?;
        if cached.generation != generation {
            let matches = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(slot, s)| {
                    s.as_ref()
                        .filter(|s| regex.is_match(&s.node.address))
                        .map(|_| slot as u32)
                })
                .collect();
            cached.matches = Arc::new(matches);
            cached.generation = generation;
        }
        Ok(Some((regex, cached.matches.clone())))
    }

    /// Lower is better. Bin-pack: the least normalized capacity left after placing;
    /// spread: the most. Memory and vCPUs are normalized by the average node's, so
    /// neither dominates.
    fn rank(&self, state: &NodeState, slot: u32, vm: &VmDemand) -> Rank {
        let class = &self.classes[state.class as usize];
        let tier = u8::from(vm.requirements.gpu.is_empty() && !class.gpus.is_empty());
        let score = self.left_after(state.free_vcpus(), state.free_memory(), vm);
        Rank {
            tier,
            score: match self.policy {
                Policy::BinPack => score,
                Policy::Spread => -score,
            },
            slot,
        }
    }

    fn left_after(&self, free_vcpus: u64, free_memory: u64, vm: &VmDemand) -> f64 {
        let (avg_vcpus, avg_memory) = self.averages();
        (free_vcpus - vm.vcpus) as f64 / avg_vcpus
            + (free_memory - vm.memory_mib) as f64 / avg_memory
    }

    /// The average node's vCPUs and memory (at least 1).
    fn averages(&self) -> (f64, f64) {
        let nodes = self.by_hash.len().max(1) as f64;
        (
            (self.total_vcpus as f64 / nodes).max(1.0),
            (self.total_memory_mib as f64 / nodes).max(1.0),
        )
    }

    /// The best node for `vm`, if one fits.
    fn find(&self, vm: &VmDemand, regex: Option<(&Regex, &[u32])>) -> Option<u32> {
        let req = &vm.requirements;
        let named = req.node.as_ref();
        // Requirements that name nodes: check just those. Nodes from the regex's cached
        // list match it already; CPU and GPU hardware is checked once per class.
        let (candidates, regex): (Option<Vec<u32>>, Option<&Regex>) =
            if let Some(hash) = named.and_then(|n| n.node_hash.as_ref()) {
                (
                    Some(self.by_hash.get(hash).copied().into_iter().collect()),
                    regex.map(|(re, _)| re),
                )
            } else if let Some(owner) = named.and_then(|n| n.owner.as_ref()) {
                (
                    Some(
                        self.by_owner
                            .get(&owner.to_ascii_lowercase())
                            .map(|s| s.iter().copied().collect())
                            .unwrap_or_default(),
                    ),
                    regex.map(|(re, _)| re),
                )
            } else {
                (regex.map(|(_, matches)| matches.to_vec()), None)
            };
        if let Some(candidates) = candidates {
            let admits: Vec<bool> = self.classes.iter().map(|c| c.admits(req)).collect();
            let mut best: Option<Rank> = None;
            for slot in candidates {
                let state = self.slots[slot as usize].as_ref().expect("live slot");
                if !admits[state.class as usize]
                    || names_misfit(&state.node, req, regex).is_some()
                    || state.capacity_misfit(vm).is_some()
                {
                    continue;
                }
                let rank = self.rank(state, slot, vm);
                if best.is_none_or(|b| rank.better_than(&b)) {
                    best = Some(rank);
                }
            }
            return best.map(|b| b.slot);
        }
        // Otherwise the class indexes: per class, per free-vCPU bucket with enough vCPUs,
        // the node with the least (bin-pack) or most (spread) free memory that fits.
        // Buckets are visited from the best bound on: a bucket whose bound cannot beat the
        // best so far ends the class.
        let (avg_vcpus, avg_memory) = self.averages();
        let mut best: Option<Rank> = None;
        // Classes without GPUs first: for a VM that wants none they are tier 0, and once
        // one fits, GPU classes need no look.
        let classes = self
            .classes
            .iter()
            .filter(|c| c.gpus.is_empty())
            .chain(self.classes.iter().filter(|c| !c.gpus.is_empty()));
        for class in classes {
            // The most free vCPUs and memory in the class (not always on one node).
            let most_memory = class.free_memory.last_key_value().map_or(0, |(&m, _)| m);
            if class.members == 0
                || class
                    .index
                    .last_key_value()
                    .is_none_or(|(&most, _)| most < vm.vcpus)
                || most_memory < vm.memory_mib
                || !class.admits(req)
            {
                continue;
            }
            let tier = u8::from(req.gpu.is_empty() && !class.gpus.is_empty());
            if best.is_some_and(|b| b.tier < tier) {
                continue;
            }
            let cannot_beat = |score: f64, best: Option<Rank>| {
                best.is_some_and(|b| b.tier == tier && score > b.score)
            };
            let fits = |&&(_, slot): &&(u64, u32)| {
                let state = self.slots[slot as usize].as_ref().expect("live slot");
                state.capacity_misfit(vm).is_none()
            };
            let consider = |free_vcpus: u64, pick: Option<&(u64, u32)>, best: &mut Option<Rank>| {
                if let Some(&(free_memory, slot)) = pick {
                    let left = self.left_after(free_vcpus, free_memory, vm);
                    let rank = Rank {
                        tier,
                        score: match self.policy {
                            Policy::BinPack => left,
                            Policy::Spread => -left,
                        },
                        slot,
                    };
                    if best.is_none_or(|b| rank.better_than(&b)) {
                        *best = Some(rank);
                    }
                }
            };
            match self.policy {
                Policy::BinPack => {
                    for (&free_vcpus, bucket) in class.index.range(vm.vcpus..) {
                        // At best no memory is left over.
                        if cannot_beat((free_vcpus - vm.vcpus) as f64 / avg_vcpus, best) {
                            break;
                        }
                        let pick = bucket.range((vm.memory_mib, 0)..).find(fits);
                        consider(free_vcpus, pick, &mut best);
                    }
                }
                Policy::Spread => {
                    for (&free_vcpus, bucket) in class.index.range(vm.vcpus..).rev() {
                        // At best this bucket has the class's most free memory.
                        let most = (free_vcpus - vm.vcpus) as f64 / avg_vcpus
                            + (most_memory - vm.memory_mib) as f64 / avg_memory;
                        if cannot_beat(-most, best) {
                            break;
                        }
                        let pick = bucket
                            .iter()
                            .rev()
                            .take_while(|(memory, _)| *memory >= vm.memory_mib)
                            .find(fits);
                        consider(free_vcpus, pick, &mut best);
                    }
                }
            }
        }
        best.map(|b| b.slot)
    }

    /// Why no node takes `vm`: each node counted under the first check it fails.
    fn explain(&self, vm: &VmDemand, address_matches: Option<&[u32]>) -> Unplaceable {
        use requirements::{describe_cpu, describe_gpus, nodes};
        if self.by_hash.is_empty() {
            return Unplaceable {
                reasons: vec!["no active node".into()],
            };
        }
        let req = &vm.requirements;
        // Per kind of misfit: how many nodes, and the most free of the resource that fell
        // short among them.
        let mut counts: BTreeMap<Misfit, (u64, u64)> = BTreeMap::new();
        let class_misfit: Vec<Option<Misfit>> = self
            .classes
            .iter()
            .map(|c| {
                if req
                    .cpu
                    .as_ref()
                    .is_some_and(|want| !cpu_matches(&c.cpu, want))
                {
                    Some(Misfit::Cpu)
                } else if !req.gpu.is_empty() && assign_gpus(&c.gpus, &[], &req.gpu).is_none() {
                    Some(Misfit::GpuHardware)
                } else {
                    None
                }
            })
            .collect();
        // The regex's cached matches, not the regex per node.
        let address_ok: Option<Vec<bool>> = address_matches.map(|matches| {
            let mut ok = vec![false; self.slots.len()];
            for &slot in matches {
                ok[slot as usize] = true;
            }
            ok
        });
        for (slot, state) in self.slots.iter().enumerate() {
            let Some(state) = state else { continue };
            let misfit = names_misfit(&state.node, req, None)
                .or_else(|| {
                    address_ok
                        .as_ref()
                        .is_some_and(|ok| !ok[slot])
                        .then_some(Misfit::Address)
                })
                .or(class_misfit[state.class as usize])
                .or_else(|| state.capacity_misfit(vm));
            let most = match misfit {
                Some(Misfit::Vcpus) => state.free_vcpus(),
                Some(Misfit::Memory) => state.free_memory(),
                Some(Misfit::Disk) => state.free_disk(),
                _ => 0,
            };
            match misfit {
                Some(m) => {
                    let entry = counts.entry(m).or_default();
                    entry.0 += 1;
                    entry.1 = entry.1.max(most);
                }
                None => debug_assert!(false, "explain found a node that fits"),
            }
        }
        let gpu_anywhere = self
            .classes
            .iter()
            .any(|c| c.members > 0 && assign_gpus(&c.gpus, &[], &req.gpu).is_some());
        let named = req.node.as_ref();
        let mut reasons = Vec::new();
        for (misfit, (n, most)) in counts {
            let count = nodes(n);
            reasons.push(match misfit {
                Misfit::NotTheNode => {
                    let hash = named
                        .and_then(|n| n.node_hash.as_deref())
                        .unwrap_or_default();
                    if self.by_hash.contains_key(hash) {
                        format!("{count}: not the required node {hash}")
                    } else {
                        format!("the required node {hash} is not an active node")
                    }
                }
                Misfit::Owner => format!(
                    "{count}: not owned by {}",
                    named.and_then(|n| n.owner.as_deref()).unwrap_or_default()
                ),
                Misfit::Address => format!(
                    "{count}: address does not match {:?}",
                    named
                        .and_then(|n| n.address_regex.as_deref())
                        .unwrap_or_default()
                ),
                Misfit::Cpu => format!(
                    "{count}: CPU is not {}",
                    req.cpu.as_ref().map(describe_cpu).unwrap_or_default()
                ),
                Misfit::GpuHardware if !gpu_anywhere => {
                    format!("no node with {}", describe_gpus(&req.gpu))
                }
                Misfit::GpuHardware => format!("{count}: without {}", describe_gpus(&req.gpu)),
                Misfit::Vcpus => format!(
                    "{count}: not enough free vCPUs (needs {}, the most free is {most})",
                    vm.vcpus
                ),
                Misfit::Memory => format!(
                    "{count}: not enough free memory (needs {} MiB, the most free is {most} MiB)",
                    vm.memory_mib
                ),
                Misfit::Disk => format!(
                    "{count}: not enough free disk (needs {} MiB, the most free is {most} MiB)",
                    vm.disk_mib
                ),
                Misfit::GpusTaken => format!(
                    "{count}: {} taken by other VMs",
                    if req.gpu.len() == 1 {
                        "the matching GPUs are"
                    } else {
                        "not enough matching GPUs free, the others"
                    }
                ),
            });
        }
        Unplaceable { reasons }
    }
}

/// Marks and returns the free GPUs of `state` that `wants` get.
fn take_gpus(state: &mut NodeState, wants: &[GpuRequirement]) -> Vec<usize> {
    if wants.is_empty() {
        return Vec::new();
    }
    let chosen = assign_gpus(&state.node.capacity.gpus, &state.gpu_taken, wants)
        // Restored over capacity (assign): take what matches one by one.
        .unwrap_or_else(|| {
            let mut got = Vec::new();
            for want in wants {
                let mut taken = state.gpu_taken.clone();
                for &g in &got {
                    taken[g] = true;
                }
                if let Some(g) = assign_gpus(
                    &state.node.capacity.gpus,
                    &taken,
                    std::slice::from_ref(want),
                ) {
                    got.push(g[0]);
                }
            }
            got
        });
    for &g in &chosen {
        state.gpu_taken[g] = true;
    }
    chosen
}

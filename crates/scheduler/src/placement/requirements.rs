//! Matching a VM's `requirements` against a node: the static part (which node, owner,
//! address, CPU, GPU hardware) and the GPU assignment (which of a node's free GPUs a VM
//! takes, each GPU to one VM).

use super::{CpuRequirement, GpuRequirement, Node, Requirements};
use aleph_protocol::scheduler::{CpuProperties, Gpu};
use regex::Regex;

/// Why a node cannot take a VM, in the order the checks run (a node counts under the
/// first check it fails).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Misfit {
    NotTheNode,
    Owner,
    Address,
    Cpu,
    GpuHardware,
    Vcpus,
    Memory,
    Disk,
    GpusTaken,
}

/// The static checks of one node against one VM's requirements (everything but free
/// capacity). `address_regex` is the compiled `requirements.node.address_regex`.
pub(crate) fn static_misfit(
    node: &Node,
    req: &Requirements,
    address_regex: Option<&Regex>,
) -> Option<Misfit> {
    if let Some(misfit) = names_misfit(node, req, address_regex) {
        return Some(misfit);
    }
    if let Some(cpu) = &req.cpu
        && !cpu_matches(&node.capacity.cpu, cpu)
    {
        return Some(Misfit::Cpu);
    }
    if !req.gpu.is_empty() && assign_gpus(&node.capacity.gpus, &[], &req.gpu).is_none() {
        return Some(Misfit::GpuHardware);
    }
    None
}

/// The checks of requirements that name nodes: node hash, owner, address.
pub(crate) fn names_misfit(
    node: &Node,
    req: &Requirements,
    address_regex: Option<&Regex>,
) -> Option<Misfit> {
    if let Some(n) = &req.node {
        if n.node_hash.as_ref().is_some_and(|h| h != &node.hash) {
            return Some(Misfit::NotTheNode);
        }
        if n.owner
            .as_ref()
            .is_some_and(|o| !o.eq_ignore_ascii_case(&node.owner))
        {
            return Some(Misfit::Owner);
        }
    }
    if address_regex.is_some_and(|re| !re.is_match(&node.address)) {
        return Some(Misfit::Address);
    }
    None
}

pub(crate) fn cpu_matches(have: &CpuProperties, want: &CpuRequirement) -> bool {
    want.architecture
        .as_ref()
        .is_none_or(|a| a.eq_ignore_ascii_case(&have.architecture))
        && want
            .vendor
            .as_ref()
            .is_none_or(|v| v.eq_ignore_ascii_case(&have.vendor))
        && want
            .features
            .iter()
            .all(|f| have.features.iter().any(|h| h.eq_ignore_ascii_case(f)))
}

pub(crate) fn gpu_matches(have: &Gpu, want: &GpuRequirement) -> bool {
    want.vendor
        .as_ref()
        .is_none_or(|v| v.eq_ignore_ascii_case(&have.vendor))
        && want
            .device_name
            .as_ref()
            .is_none_or(|d| d.eq_ignore_ascii_case(&have.device_name))
        && want
            .device_class
            .as_ref()
            .is_none_or(|c| c.eq_ignore_ascii_case(&have.device_class))
        && want
            .device_id
            .as_ref()
            .is_none_or(|d| d.eq_ignore_ascii_case(&have.device_id))
        && want.vram_mib.is_none_or(|v| have.vram_mib >= v)
}

/// Gives each wanted GPU a distinct GPU of `gpus` that matches it and is not `taken`
/// (an index missing from `taken` counts as free). Returns the chosen indices, in the
/// order of `wants`, or None when no such assignment exists. A bipartite matching
/// (augmenting paths), so "any nvidia" never takes the only H100 that a second want
/// needs; nodes have a handful of GPUs, so this is cheap.
pub(crate) fn assign_gpus(
    gpus: &[Gpu],
    taken: &[bool],
    wants: &[GpuRequirement],
) -> Option<Vec<usize>> {
    if wants.is_empty() {
        return Some(Vec::new());
    }
    if wants.len() > gpus.len() {
        return None;
    }
    let free = |i: usize| !taken.get(i).copied().unwrap_or(false);
    // holder[gpu] = the want it is given to.
    let mut holder: Vec<Option<usize>> = vec![None; gpus.len()];
    fn augment(
        want: usize,
        gpus: &[Gpu],
        wants: &[GpuRequirement],
        free: &dyn Fn(usize) -> bool,
        holder: &mut [Option<usize>],
        seen: &mut [bool],
    ) -> bool {
        for g in 0..gpus.len() {
            if seen[g] || !free(g) || !gpu_matches(&gpus[g], &wants[want]) {
                continue;
            }
            seen[g] = true;
            let previous = holder[g];
            if previous.is_none_or(|other| augment(other, gpus, wants, free, holder, seen)) {
                holder[g] = Some(want);
                return true;
            }
        }
        false
    }
    for want in 0..wants.len() {
        let mut seen = vec![false; gpus.len()];
        if !augment(want, gpus, wants, &free, &mut holder, &mut seen) {
            return None;
        }
    }
    let mut chosen = vec![0; wants.len()];
    for (g, h) in holder.iter().enumerate() {
        if let Some(w) = h {
            chosen[*w] = g;
        }
    }
    Some(chosen)
}

/// `nvidia H100 10de:2331 with ≥ 81920 MiB VRAM`; `any GPU` for an empty want.
pub(crate) fn describe_gpu(want: &GpuRequirement) -> String {
    let mut parts: Vec<String> = [
        &want.vendor,
        &want.device_name,
        &want.device_class,
        &want.device_id,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect();
    if let Some(v) = want.vram_mib {
        parts.push(format!("with ≥ {v} MiB VRAM"));
    }
    if parts.is_empty() {
        "any GPU".into()
    } else {
        parts.join(" ")
    }
}

pub(crate) fn describe_gpus(wants: &[GpuRequirement]) -> String {
    let each: Vec<String> = wants.iter().map(describe_gpu).collect();
    if wants.len() == 1 {
        format!("a GPU {}", each[0])
    } else {
        format!("{} GPUs: {}", wants.len(), each.join(", "))
    }
}

pub(crate) fn describe_cpu(want: &CpuRequirement) -> String {
    let mut parts: Vec<String> = [&want.architecture, &want.vendor]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    if !want.features.is_empty() {
        parts.push(format!("with {}", want.features.join(", ")));
    }
    parts.join(" ")
}

/// `9812` → `9,812`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn nodes(n: u64) -> String {
    if n == 1 {
        "1 node".into()
    } else {
        format!("{} nodes", thousands(n))
    }
}

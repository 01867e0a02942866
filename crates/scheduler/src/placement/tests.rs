use super::bench::{self, Rng};
use super::requirements::{assign_gpus, gpu_matches, static_misfit, thousands};
use super::*;
use serde_json::json;

fn node(hash: &str, vcpus: u64, memory_mib: u64) -> Node {
    Node {
        hash: hash.into(),
        owner: "0xowner".into(),
        address: format!("http://{hash}.example"),
        capacity: NodeResources {
            vcpus,
            memory_mib,
            disk_mib: 100_000,
            ..Default::default()
        },
    }
}

fn vm(hash: &str, vcpus: u64, memory_mib: u64) -> VmDemand {
    VmDemand {
        vm_hash: hash.into(),
        vcpus,
        memory_mib,
        disk_mib: 1000,
        ..Default::default()
    }
}

fn gpu(device_id: &str, vram_mib: u64) -> Gpu {
    Gpu {
        vendor: "NVIDIA".into(),
        device_name: format!("model {device_id}"),
        device_class: "0302".into(),
        device_id: device_id.into(),
        vram_mib,
    }
}

fn with_gpus(mut n: Node, gpus: Vec<Gpu>) -> Node {
    n.capacity.gpus = gpus;
    n
}

fn wants(v: VmDemand, requirements: serde_json::Value) -> VmDemand {
    VmDemand {
        requirements: Requirements::from_content(&json!({ "requirements": requirements })).unwrap(),
        ..v
    }
}

fn free(placer: &Placer, hash: &str) -> (u64, u64, u64, usize) {
    let f = placer.free_of(hash).unwrap();
    (f.vcpus, f.memory_mib, f.disk_mib, f.gpus.len())
}

#[test]
fn places_releases_and_explains() {
    let mut placer = Placer::new(Policy::BinPack);
    placer.upsert_node(node("a", 4, 4096));
    placer.upsert_node(node("b", 4, 2048));
    assert_eq!(placer.place(&vm("v1", 1, 2048)).unwrap(), "b");
    assert_eq!(placer.place(&vm("v2", 1, 2048)).unwrap(), "a");
    let err = placer.place(&vm("v3", 1, 4096)).unwrap_err();
    assert_eq!(
        err.reasons,
        vec!["2 nodes: not enough free memory (needs 4096 MiB, the most free is 2048 MiB)"]
    );
    assert_eq!(placer.release("v1").as_deref(), Some("b"));
    // Both have 2048 MiB free; "a" has fewer vCPUs left, so it is the fuller.
    assert_eq!(placer.place(&vm("v3", 1, 2048)).unwrap(), "a");
    assert_eq!(placer.place(&vm("v4", 1, 1024)).unwrap(), "b");
    assert_eq!(
        placer.remove_node("a"),
        vec!["v2".to_string(), "v3".to_string()]
    );
    assert_eq!(placer.node_of("v2"), None);
    assert_eq!(placer.node_of("v4"), Some("b"));
}

#[test]
fn requirements_parse_from_content() {
    let content = json!({
        "requirements": {
            "cpu": {"architecture": "x86_64", "vendor": "AuthenticAMD", "features": ["sev"]},
            "node": {"node_hash": "abc", "owner": "0x1", "address_regex": "^https://"},
            "gpu": [{"vendor": "NVIDIA", "device_id": "10de:2331", "vram_mib": 81920}]
        }
    });
    let req = Requirements::from_content(&content).unwrap();
    assert_eq!(req.cpu.as_ref().unwrap().features, vec!["sev"]);
    assert_eq!(req.node.as_ref().unwrap().node_hash.as_deref(), Some("abc"));
    assert_eq!(req.gpu[0].vram_mib, Some(81920));
    assert_eq!(
        Requirements::from_content(&json!({})).unwrap(),
        Requirements::default()
    );
    assert!(Requirements::from_content(&json!({"requirements": {"gpu": "x"}})).is_err());
}

#[test]
fn node_hash_owner_and_address_requirements() {
    let mut placer = Placer::new(Policy::BinPack);
    let mut a = node("a", 8, 8192);
    a.owner = "0xAbC".into();
    a.address = "https://crn.alpha.net".into();
    let mut b = node("b", 8, 4096);
    b.address = "https://crn.beta.org".into();
    placer.upsert_node(a);
    placer.upsert_node(b);
    // Bin-pack alone would take b (less free): each requirement overrides it.
    let pinned = wants(vm("p", 1, 512), json!({"node": {"node_hash": "a"}}));
    assert_eq!(placer.place(&pinned).unwrap(), "a");
    let owned = wants(vm("o", 1, 512), json!({"node": {"owner": "0xabc"}}));
    assert_eq!(placer.place(&owned).unwrap(), "a");
    let by_address = wants(
        vm("r", 1, 512),
        json!({"node": {"address_regex": r"\.net$"}}),
    );
    assert_eq!(placer.place(&by_address).unwrap(), "a");
    let other = wants(
        vm("r2", 1, 512),
        json!({"node": {"address_regex": r"beta"}}),
    );
    assert_eq!(placer.place(&other).unwrap(), "b");

    let unknown = wants(vm("u", 1, 512), json!({"node": {"node_hash": "zzz"}}));
    assert_eq!(
        placer.place(&unknown).unwrap_err().reasons,
        vec!["the required node zzz is not an active node"]
    );
    let nobody = wants(vm("n", 1, 512), json!({"node": {"owner": "0xdef"}}));
    assert_eq!(
        placer.place(&nobody).unwrap_err().reasons,
        vec!["2 nodes: not owned by 0xdef"]
    );
    let nowhere = wants(vm("w", 1, 512), json!({"node": {"address_regex": "gamma"}}));
    assert_eq!(
        placer.place(&nowhere).unwrap_err().reasons,
        vec![r#"2 nodes: address does not match "gamma""#]
    );
    let invalid = wants(vm("i", 1, 512), json!({"node": {"address_regex": "("}}));
    let reasons = placer.place(&invalid).unwrap_err().reasons;
    assert!(
        reasons[0].starts_with(r#"invalid address_regex "(""#),
        "{reasons:?}"
    );

    // The regex cache follows address changes.
    let mut b = placer.node("b").unwrap().clone();
    b.address = "https://crn.gamma.org".into();
    placer.upsert_node(b);
    assert_eq!(placer.place(&nowhere).unwrap(), "b");
    // ... and the owner index owner changes.
    let mut b = placer.node("b").unwrap().clone();
    b.owner = "0xDEF".into();
    placer.upsert_node(b);
    assert_eq!(placer.place(&nobody).unwrap(), "b");
}

#[test]
fn cpu_requirements() {
    let mut placer = Placer::new(Policy::BinPack);
    let mut amd = node("amd", 8, 8192);
    amd.capacity.cpu = CpuProperties {
        architecture: "x86_64".into(),
        vendor: "AuthenticAMD".into(),
        features: vec!["sev".into(), "sev_es".into()],
    };
    let mut intel = node("intel", 8, 4096);
    intel.capacity.cpu = CpuProperties {
        architecture: "x86_64".into(),
        vendor: "GenuineIntel".into(),
        features: vec![],
    };
    let mut arm = node("arm", 8, 2048);
    arm.capacity.cpu = CpuProperties {
        architecture: "aarch64".into(),
        vendor: "ARM".into(),
        features: vec![],
    };
    placer.upsert_node(amd);
    placer.upsert_node(intel);
    placer.upsert_node(arm);
    let cases = [
        (json!({"cpu": {"architecture": "x86_64"}}), "intel"),
        (json!({"cpu": {"vendor": "authenticamd"}}), "amd"),
        (json!({"cpu": {"features": ["sev_es"]}}), "amd"),
        (json!({"cpu": {"architecture": "aarch64"}}), "arm"),
        (json!({}), "arm"),
    ];
    for (i, (req, expected)) in cases.into_iter().enumerate() {
        let v = wants(vm(&format!("v{i}"), 1, 256), req);
        assert_eq!(placer.place(&v).unwrap(), expected, "case {i}");
        placer.release(&v.vm_hash);
    }
    let snp = wants(vm("snp", 1, 256), json!({"cpu": {"features": ["sev_snp"]}}));
    assert_eq!(
        placer.place(&snp).unwrap_err().reasons,
        vec!["3 nodes: CPU is not with sev_snp"]
    );
    let risc = wants(
        vm("risc", 1, 256),
        json!({"cpu": {"architecture": "riscv64", "vendor": "SiFive"}}),
    );
    assert_eq!(
        placer.place(&risc).unwrap_err().reasons,
        vec!["3 nodes: CPU is not riscv64 SiFive"]
    );
}

#[test]
fn gpu_requirements_count_vram_and_exclusive_use() {
    let mut placer = Placer::new(Policy::BinPack);
    placer.upsert_node(with_gpus(
        node("h100", 32, 65536),
        vec![gpu("10de:2331", 81920)],
    ));
    placer.upsert_node(with_gpus(
        node("rtx", 32, 65536),
        vec![gpu("10de:27b0", 20480), gpu("10de:27b0", 20480)],
    ));
    placer.upsert_node(node("plain", 32, 65536));

    // A VM without GPU requirements keeps off GPU nodes while a plain one fits.
    assert_eq!(placer.place(&vm("cpu-only", 1, 1024)).unwrap(), "plain");

    let big = wants(vm("big", 4, 8192), json!({"gpu": [{"vram_mib": 40960}]}));
    assert_eq!(placer.place(&big).unwrap(), "h100");
    assert_eq!(placer.gpus_of("big"), Some(&[0usize][..]));
    assert_eq!(free(&placer, "h100").3, 0);
    // The one H100 is taken: a second VM wanting it cannot have it.
    let big2 = wants(
        vm("big2", 4, 8192),
        json!({"gpu": [{"device_id": "10de:2331"}]}),
    );
    assert_eq!(
        placer.place(&big2).unwrap_err().reasons,
        vec![
            "2 nodes: without a GPU 10de:2331",
            "1 node: the matching GPUs are taken by other VMs",
        ]
    );
    // Two GPUs: only the RTX node has two.
    let pair = wants(
        vm("pair", 2, 4096),
        json!({"gpu": [{"vendor": "nvidia"}, {"vendor": "nvidia"}]}),
    );
    assert_eq!(placer.place(&pair).unwrap(), "rtx");
    let mut held = placer.gpus_of("pair").unwrap().to_vec();
    held.sort();
    assert_eq!(held, vec![0, 1]);
    let one_more = wants(vm("one", 1, 1024), json!({"gpu": [{"vendor": "NVIDIA"}]}));
    assert!(placer.place(&one_more).is_err());
    // Releasing frees exactly the GPUs held.
    placer.release("big");
    assert_eq!(free(&placer, "h100").3, 1);
    assert_eq!(placer.place(&big2).unwrap(), "h100");
    placer.release("pair");
    assert_eq!(placer.place(&one_more).unwrap(), "rtx");
    assert_eq!(free(&placer, "rtx").3, 1);

    let absent = wants(
        vm("absent", 1, 1024),
        json!({"gpu": [{"device_id": "1002:74a1"}]}),
    );
    assert_eq!(
        placer.place(&absent).unwrap_err().reasons,
        vec!["no node with a GPU 1002:74a1"]
    );
}

#[test]
fn gpu_assignment_is_a_matching() {
    // "any NVIDIA" must not take the only H100 that the second want needs.
    let gpus = vec![gpu("10de:2331", 81920), gpu("10de:27b0", 20480)];
    let any = GpuRequirement {
        vendor: Some("nvidia".into()),
        ..Default::default()
    };
    let h100 = GpuRequirement {
        device_id: Some("10de:2331".into()),
        ..Default::default()
    };
    assert_eq!(
        assign_gpus(&gpus, &[], &[any.clone(), h100.clone()]),
        Some(vec![1, 0])
    );
    assert_eq!(
        assign_gpus(&gpus, &[true, false], std::slice::from_ref(&h100)),
        None
    );
    assert_eq!(assign_gpus(&gpus, &[], &[h100.clone(), h100]), None);
    assert!(gpu_matches(&gpus[0], &any));
}

#[test]
fn bin_pack_takes_the_fullest_and_spread_the_emptiest() {
    for (policy, expected) in [(Policy::BinPack, "small"), (Policy::Spread, "large")] {
        let mut placer = Placer::new(policy);
        placer.upsert_node(node("small", 4, 4096));
        placer.upsert_node(node("medium", 8, 8192));
        placer.upsert_node(node("large", 16, 16384));
        assert_eq!(
            placer.place(&vm("v", 2, 2048)).unwrap(),
            expected,
            "{policy:?}"
        );
    }
    // Spread keeps spreading: four VMs on four nodes.
    let mut placer = Placer::new(Policy::Spread);
    for n in ["a", "b", "c", "d"] {
        placer.upsert_node(node(n, 8, 8192));
    }
    let mut used: Vec<String> = (0..4)
        .map(|i| placer.place(&vm(&format!("v{i}"), 1, 1024)).unwrap())
        .collect();
    used.sort();
    assert_eq!(used, vec!["a", "b", "c", "d"]);
    // Bin-pack fills one node before the next.
    let mut placer = Placer::new(Policy::BinPack);
    for n in ["a", "b"] {
        placer.upsert_node(node(n, 8, 8192));
    }
    let first = placer.place(&vm("v0", 1, 1024)).unwrap();
    for i in 1..8 {
        assert_eq!(placer.place(&vm(&format!("v{i}"), 1, 1024)).unwrap(), first);
    }
    assert_ne!(placer.place(&vm("v8", 1, 1024)).unwrap(), first);
}

#[test]
fn bin_pack_weighs_vcpus_and_memory() {
    // "mem" has the least free memory but would be left with 7 idle vCPUs; "cpu"
    // fits the VM almost exactly in both.
    let mut placer = Placer::new(Policy::BinPack);
    placer.upsert_node(node("mem", 8, 2048));
    placer.upsert_node(node("cpu", 2, 4096));
    assert_eq!(placer.place(&vm("v", 1, 2048)).unwrap(), "cpu");
}

#[test]
fn capacity_round_trips_are_exact() {
    let mut placer = Placer::new(Policy::BinPack);
    placer.upsert_node(with_gpus(node("a", 8, 8192), vec![gpu("10de:2331", 81920)]));
    let before = free(&placer, "a");
    let g = wants(vm("g", 3, 3000), json!({"gpu": [{}]}));
    let mut d = vm("d", 2, 1000);
    d.disk_mib = 5000;
    placer.place(&g).unwrap();
    placer.place(&d).unwrap();
    assert_eq!(free(&placer, "a"), (3, 4192, 100_000 - 6000, 0));
    // Placing the same VM again moves it, it does not count it twice.
    placer.place(&d).unwrap();
    assert_eq!(free(&placer, "a"), (3, 4192, 100_000 - 6000, 0));
    assert_eq!(placer.placed_on("a"), vec!["d", "g"]);
    // Capacity grows: free grows by as much; placements stay.
    let mut bigger = placer.node("a").unwrap().clone();
    bigger.capacity.memory_mib = 16384;
    placer.upsert_node(bigger.clone());
    assert_eq!(free(&placer, "a"), (3, 12384, 94_000, 0));
    // Shrinks below what is placed: nothing free, nothing lost.
    let mut smaller = bigger.clone();
    smaller.capacity.vcpus = 4;
    smaller.capacity.gpus.clear();
    placer.upsert_node(smaller);
    assert_eq!(free(&placer, "a"), (0, 12384, 94_000, 0));
    assert_eq!(placer.gpus_of("g"), Some(&[][..]));
    placer.upsert_node(bigger);
    assert_eq!(placer.gpus_of("g"), Some(&[0usize][..]));
    assert_eq!(placer.release("g").as_deref(), Some("a"));
    assert_eq!(placer.release("d").as_deref(), Some("a"));
    assert_eq!(placer.release("d"), None);
    assert_eq!(free(&placer, "a"), (8, 16384, 100_000, 1));
    // Restored placements (assign) count, even over capacity.
    assert!(placer.assign(&vm("r1", 6, 10000), "a"));
    assert!(placer.assign(&vm("r2", 6, 10000), "a"));
    assert!(!placer.assign(&vm("r3", 1, 1), "nowhere"));
    assert_eq!(free(&placer, "a").0, 0);
    assert!(placer.place(&vm("r4", 1, 1)).is_err());
    assert_eq!(placer.remove_node("a"), vec!["r1", "r2"]);
    assert_eq!(placer.placed_count(), 0);
    placer.upsert_node(node("a", 8, 8192));
    assert_eq!(free(&placer, "a"), (8, 8192, 100_000, 0));
    assert_eq!(before, (8, 8192, 100_000, 1));
}

#[test]
fn reasons_count_every_node_once() {
    let mut placer = Placer::new(Policy::BinPack);
    assert_eq!(
        placer.place(&vm("v", 1, 1)).unwrap_err().reasons,
        vec!["no active node"]
    );
    for i in 0..3 {
        placer.upsert_node(node(&format!("cpu{i}"), 1, 65536));
    }
    for i in 0..2 {
        placer.upsert_node(node(&format!("mem{i}"), 64, 4096));
    }
    let mut disk = node("disk", 64, 65536);
    disk.capacity.disk_mib = 500;
    placer.upsert_node(disk);
    let err = placer.place(&vm("v", 2, 8192)).unwrap_err();
    assert_eq!(
        err.reasons,
        vec![
            "3 nodes: not enough free vCPUs (needs 2, the most free is 1)",
            "2 nodes: not enough free memory (needs 8192 MiB, the most free is 4096 MiB)",
            "1 node: not enough free disk (needs 1000 MiB, the most free is 500 MiB)",
        ]
    );
    assert_eq!(
        err.to_string(),
        format!("no node fits: {}", err.reasons.join("; "))
    );
    assert_eq!(thousands(9812), "9,812");
    assert_eq!(thousands(1_000_000), "1,000,000");
    assert_eq!(thousands(999), "999");
}

/// The naive reference: every node checked against every VM.
struct Reference {
    nodes: Vec<(Node, u64, u64, u64, Vec<bool>)>,
}

impl Reference {
    fn fitting(&self, vm: &VmDemand) -> Vec<usize> {
        let regex = vm
            .requirements
            .node
            .as_ref()
            .and_then(|n| n.address_regex.as_ref())
            .map(|p| regex::Regex::new(p).unwrap());
        (0..self.nodes.len())
            .filter(|&i| {
                let (n, v, m, d, taken) = &self.nodes[i];
                static_misfit(n, &vm.requirements, regex.as_ref()).is_none()
                    && n.capacity.vcpus.saturating_sub(*v) >= vm.vcpus
                    && n.capacity.memory_mib.saturating_sub(*m) >= vm.memory_mib
                    && n.capacity.disk_mib.saturating_sub(*d) >= vm.disk_mib
                    && assign_gpus(&n.capacity.gpus, taken, &vm.requirements.gpu).is_some()
            })
            .collect()
    }

    fn index(&self, hash: &str) -> usize {
        self.nodes.iter().position(|n| n.0.hash == hash).unwrap()
    }

    /// The normalized capacity left on node `i` after `vm`, as the placer scores it.
    fn left_after(&self, i: usize, vm: &VmDemand) -> (u8, f64) {
        let count = self.nodes.len() as f64;
        let avg_v =
            (self.nodes.iter().map(|n| n.0.capacity.vcpus).sum::<u64>() as f64 / count).max(1.0);
        let avg_m = (self
            .nodes
            .iter()
            .map(|n| n.0.capacity.memory_mib)
            .sum::<u64>() as f64
            / count)
            .max(1.0);
        let (n, v, m, ..) = &self.nodes[i];
        let tier = u8::from(vm.requirements.gpu.is_empty() && !n.capacity.gpus.is_empty());
        let left = (n.capacity.vcpus - v - vm.vcpus) as f64 / avg_v
            + (n.capacity.memory_mib - m - vm.memory_mib) as f64 / avg_m;
        (tier, left)
    }
}

/// Random place / release / remove / upsert against the naive reference: the same
/// VMs fit, the choice is the best by the policy, and free amounts stay exact.
#[test]
fn randomized_against_a_naive_reference() {
    for (seed, policy) in [
        (1, Policy::BinPack),
        (2, Policy::Spread),
        (3, Policy::BinPack),
    ] {
        let mut rng = Rng::new(seed);
        let nodes = bench::generate_nodes(60, seed);
        let vms = bench::generate_vms(3000, &nodes, seed);
        let mut placer = Placer::new(policy);
        let mut reference = Reference { nodes: Vec::new() };
        for n in &nodes[..40] {
            placer.upsert_node(n.clone());
            reference
                .nodes
                .push((n.clone(), 0, 0, 0, vec![false; n.capacity.gpus.len()]));
        }
        let mut spare = nodes[40..].to_vec();
        let mut placed: Vec<VmDemand> = Vec::new();
        let mut failures = 0;
        for (step, vm) in vms.iter().enumerate() {
            let fitting = reference.fitting(vm);
            match placer.place(vm) {
                Ok(hash) => {
                    let i = reference.index(&hash);
                    assert!(
                        fitting.contains(&i),
                        "step {step}: placed where it does not fit"
                    );
                    let best = fitting
                        .iter()
                        .map(|&j| {
                            let (tier, left) = reference.left_after(j, vm);
                            (
                                tier,
                                if policy == Policy::BinPack {
                                    left
                                } else {
                                    -left
                                },
                            )
                        })
                        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)))
                        .unwrap();
                    let (tier, left) = reference.left_after(i, vm);
                    let chosen = (
                        tier,
                        if policy == Policy::BinPack {
                            left
                        } else {
                            -left
                        },
                    );
                    assert_eq!(chosen.0, best.0, "step {step}: tier");
                    assert!(
                        (chosen.1 - best.1).abs() < 1e-9,
                        "step {step}: {chosen:?} vs best {best:?}"
                    );
                    let n = &mut reference.nodes[i];
                    n.1 += vm.vcpus;
                    n.2 += vm.memory_mib;
                    n.3 += vm.disk_mib;
                    for &g in placer.gpus_of(&vm.vm_hash).unwrap() {
                        assert!(!n.4[g], "step {step}: GPU given twice");
                        n.4[g] = true;
                    }
                    placed.push(vm.clone());
                }
                Err(why) => {
                    assert!(fitting.is_empty(), "step {step}: {why} but {fitting:?} fit");
                    assert!(!why.reasons.is_empty());
                    failures += 1;
                }
            }
            // Now and then: release, remove a node, add one, or resize one.
            match rng.below(20) {
                0 | 1 if !placed.is_empty() => {
                    let v = placed.swap_remove(rng.below(placed.len() as u64) as usize);
                    let hash = placer.release(&v.vm_hash).unwrap();
                    let i = reference.index(&hash);
                    let n = &mut reference.nodes[i];
                    n.1 -= v.vcpus;
                    n.2 -= v.memory_mib;
                    n.3 -= v.disk_mib;
                    n.4 = vec![false; n.0.capacity.gpus.len()];
                    for other in placer.placed_on(&hash) {
                        for &g in placer.gpus_of(&other).unwrap() {
                            n.4[g] = true;
                        }
                    }
                }
                2 if reference.nodes.len() > 5 => {
                    let i = rng.below(reference.nodes.len() as u64) as usize;
                    let (n, ..) = reference.nodes.swap_remove(i);
                    let orphans = placer.remove_node(&n.hash);
                    placed.retain(|v| !orphans.contains(&v.vm_hash));
                    assert!(orphans.iter().all(|o| placer.node_of(o).is_none()));
                    spare.push(n);
                }
                3 if !spare.is_empty() => {
                    let n = spare.swap_remove(rng.below(spare.len() as u64) as usize);
                    placer.upsert_node(n.clone());
                    reference
                        .nodes
                        .push((n.clone(), 0, 0, 0, vec![false; n.capacity.gpus.len()]));
                }
                4 => {
                    // Resize without touching GPUs (a GPU change reassigns them).
                    let i = rng.below(reference.nodes.len() as u64) as usize;
                    let n = &mut reference.nodes[i];
                    n.0.capacity.memory_mib = (n.0.capacity.memory_mib as i64
                        + [-4096i64, 4096][rng.below(2) as usize])
                        .max(1024) as u64;
                    n.0.capacity.vcpus =
                        (n.0.capacity.vcpus + rng.below(3)).saturating_sub(1).max(1);
                    placer.upsert_node(n.0.clone());
                }
                _ => {}
            }
            if step % 97 == 0 {
                for (n, v, m, d, taken) in &reference.nodes {
                    let f = placer.free_of(&n.hash).unwrap();
                    assert_eq!(f.vcpus, n.capacity.vcpus.saturating_sub(*v), "step {step}");
                    assert_eq!(f.memory_mib, n.capacity.memory_mib.saturating_sub(*m));
                    assert_eq!(f.disk_mib, n.capacity.disk_mib.saturating_sub(*d));
                    assert_eq!(f.gpus.len(), taken.iter().filter(|t| !**t).count());
                }
            }
        }
        assert!(failures > 0, "the test should reach full nodes");
        assert_eq!(placer.placed_count(), placed.len());
        assert_eq!(placer.node_count(), reference.nodes.len());
        // Releasing everything gives every node back whole.
        for v in &placed {
            placer.release(&v.vm_hash).unwrap();
        }
        for (n, ..) in &reference.nodes {
            let f = placer.free_of(&n.hash).unwrap();
            assert_eq!(
                (f.vcpus, f.memory_mib, f.disk_mib, f.gpus.len()),
                (
                    n.capacity.vcpus,
                    n.capacity.memory_mib,
                    n.capacity.disk_mib,
                    n.capacity.gpus.len()
                )
            );
        }
    }
}

#[test]
fn bench_runs_small_and_is_deterministic() {
    assert_eq!(bench::generate_nodes(50, 7), bench::generate_nodes(50, 7));
    assert_ne!(bench::generate_nodes(50, 7), bench::generate_nodes(50, 8));
    let config = bench::Config {
        nodes: 100,
        vms: 2000,
        seed: 7,
        policy: Policy::BinPack,
    };
    let report = bench::run(&config);
    println!("{report}");
    // 2000 VMs overfill 100 nodes: both stop somewhere inside.
    assert!(report.first_failure.is_some());
    assert!(report.ours.vms > 100 && report.ours_offered < 2000);
    assert!(report.ffd_offered > 100 && report.ffd_offered < 2000);
    assert!(report.ours.memory_share > 0.5 && report.ours.memory_share <= 1.0);
    assert!(report.ffd.memory_share > 0.5 && report.ffd.memory_share <= 1.0);
    assert!(report.ours_end.memory_share >= report.ours.memory_share);
    // FFD's prefix is one it packs, and one more is not.
    let nodes = bench::generate_nodes(100, 7);
    let vms = bench::generate_vms(2000, &nodes, 7);
    let ends = bench::failure_ends_measure(&nodes, &vms);
    assert!(bench::ffd_pack(&nodes, &vms[..report.ffd_offered], &ends).is_some());
    assert!(bench::ffd_pack(&nodes, &vms[..report.ffd_offered + 1], &ends).is_none());
    let text = report.to_string();
    assert!(
        text.contains("placements/s") && text.contains("ratio ours/FFD"),
        "{text}"
    );
}

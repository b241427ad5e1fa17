//! The simulator keeps its own model table on purpose: it must not share a misreading with the
//! client it tests. So nothing keeps it equal to keyturn-core's built-in table, and this test
//! tells when the two drift apart: every free-tier limit core's table states must be what the
//! simulator serves for that model by default, and every model core's table names must be
//! served. Each difference known today is listed in `KNOWN` with why; a new difference fails,
//! and so does a listed one that has gone away (the list stays true).
//!
//! Models only the simulator serves are not compared: core gives them its family defaults and
//! learns the rest from the server, which is what the simulator is there to exercise.

use keyturn_core::limits::{BUILTIN_MODELS, BuiltinModel};
use keyturn_sim::config::{SERVED_MODELS, ServedModel};

/// (model, what differs, the simulator's value, core's value).
type Difference = (&'static str, &'static str, Option<u64>, Option<u64>);

/// Differences known today, each with why; none now: the simulator serves Google's free tier
/// as core's table records it (gemini-2.5-pro and gemini-2.0-flash at limit 0 since December
/// 2025, gemini-embedding-2 served). Whoever lets the two differ on purpose lists it here.
const KNOWN: &[Difference] = &[];

fn differences(builtin: &[BuiltinModel], served: &[ServedModel]) -> Vec<Difference> {
    let mut found = Vec::new();
    for b in builtin {
        let Some(core) = b.free else { continue };
        let Some(sim) = served.iter().find(|m| m.name == b.name) else {
            found.push((b.name, "served", None, None));
            continue;
        };
        for (field, sim_value, core_value) in [
            ("rpm", sim.limits.rpm, core.rpm),
            ("tpm", sim.limits.tpm, core.tpm),
            ("rpd", sim.limits.rpd, core.rpd),
        ] {
            // A limit core's table leaves out (the family default) is not a stated one.
            if core_value.is_some() && sim_value != core_value {
                found.push((b.name, field, sim_value, core_value));
            }
        }
    }
    found
}

#[test]
fn the_simulators_model_table_agrees_with_cores_built_in_free_tier() {
    let found = differences(BUILTIN_MODELS, SERVED_MODELS);
    let new: Vec<_> = found.iter().filter(|d| !KNOWN.contains(d)).collect();
    let gone: Vec<_> = KNOWN.iter().filter(|d| !found.contains(d)).collect();
    assert!(
        new.is_empty() && gone.is_empty(),
        "the simulator's SERVED_MODELS and keyturn-core's BUILTIN_MODELS (free tier) drifted \
         apart.\n(model, field, simulator, core) differing and not known: {new:?}\nknown \
         differences that are gone (remove them from KNOWN): {gone:?}"
    );
}

#[test]
fn a_stated_limit_served_differently_or_a_model_not_served_is_found() {
    let mut served: Vec<ServedModel> = SERVED_MODELS.to_vec();
    let flash = served
        .iter_mut()
        .find(|m| m.name == "gemini-2.5-flash")
        .unwrap();
    flash.limits.rpd = flash.limits.rpd.map(|n| n + 1);
    flash.limits.rpm = Some(99);
    let rpd = flash.limits.rpd;
    served.retain(|m| m.name != "gemini-2.5-flash-lite");
    let found = differences(BUILTIN_MODELS, &served);
    assert!(
        found.contains(&("gemini-2.5-flash", "rpd", rpd, Some(20))),
        "{found:?}"
    );
    assert!(
        found.contains(&("gemini-2.5-flash-lite", "served", None, None)),
        "{found:?}"
    );
    // Core states no free-tier RPM for gemini-2.5-flash (the family default applies), so the
    // simulator may serve any: not compared.
    assert!(
        !found
            .iter()
            .any(|d| d.0 == "gemini-2.5-flash" && d.1 == "rpm")
    );
}

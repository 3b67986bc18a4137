//! `Location?near`: great-circle distance, one-degree cells in the index.

use super::*;

fn location(lat: f64, lon: f64) -> Value {
    json!({ "resourceType": "Location", "position": { "latitude": lat, "longitude": lon } })
}

fn near(resource: &Value, value: &str) -> bool {
    hit(
        ResourceType::parse("Location").unwrap(),
        resource,
        "near",
        value,
    )
}

#[test]
fn near_is_within_the_distance_on_the_sphere() {
    // Cambridge, MA is about 4.5 km from Boston; New York about 306 km.
    let cambridge = location(42.3736, -71.1097);
    assert!(near(&cambridge, "42.3601|-71.0589|5|km"));
    assert!(near(&cambridge, "42.3601|-71.0589|5"));
    assert!(near(&cambridge, "42.3601|-71.0589|4500|m"));
    assert!(!near(&cambridge, "42.3601|-71.0589|4000|m"));
    assert!(near(&cambridge, "42.3601|-71.0589|3|[mi_i]"));
    assert!(!near(&cambridge, "42.3601|-71.0589|2|mi"));
    // Without a distance: within 10 km.
    assert!(near(&cambridge, "42.3601|-71.0589"));
    assert!(!near(&location(40.7128, -74.0060), "42.3601|-71.0589"));
    assert!(near(
        &location(40.7128, -74.0060),
        "42.3601|-71.0589|310|km"
    ));
    assert!(!near(
        &location(40.7128, -74.0060),
        "42.3601|-71.0589|300|km"
    ));
    // Any of several values.
    assert!(near(&cambridge, "0|0|1|km,42.37|-71.11|1|km"));
    // No position, or one without both numbers, is never near.
    let rt = ResourceType::parse("Location").unwrap();
    assert!(!near(
        &json!({ "resourceType": "Location" }),
        "0|0|20000|km"
    ));
    assert!(!near(
        &json!({ "resourceType": "Location", "position": { "latitude": 1 } }),
        "1|0|1|km"
    ));
    assert!(hit(rt, &cambridge, "near:missing", "false"));
    assert!(hit(
        rt,
        &json!({ "resourceType": "Location" }),
        "near:missing",
        "true"
    ));
}

#[test]
fn across_the_date_line_and_the_poles() {
    // 0.2 degrees of longitude apart at the equator (about 22 km), on either side of 180.
    let east = location(0.0, 179.9);
    assert!(near(&east, "0|-179.9|25|km"));
    assert!(!near(&east, "0|-179.9|20|km"));
    // Across the north pole: 0.05 degrees from it on opposite sides (about 11 km).
    let top = location(89.95, 10.0);
    assert!(near(&top, "89.95|-170|12|km"));
    assert!(!near(&top, "89.95|-170|10|km"));
    let bottom = location(-89.95, 10.0);
    assert!(near(&bottom, "-89.95|-170|12|km"));
}

#[test]
fn the_index_holds_the_one_degree_cell_never_the_position() {
    let rt = ResourceType::parse("Location").unwrap();
    assert_eq!(
        keys_of(rt, &location(42.3736, -71.1097), "near"),
        ["g:42:-72"]
    );
    assert_eq!(keys_of(rt, &location(90.0, 180.0), "near"), ["g:89:179"]);
    // A small circle inside one cell looks up that cell; one across a corner, four.
    assert_eq!(
        candidates(rt, "near", "42.5|-71.5|1|km"),
        Some(vec!["g:42:-72".to_owned()])
    );
    let corner = candidates(rt, "near", "42|-71|1|km").unwrap();
    assert_eq!(corner.len(), 4, "{corner:?}");
    // A circle around the world considers every location.
    assert_eq!(candidates(rt, "near", "0|0|15000|km"), None);
    // Random positions and queries: never a false negative (hit checks the candidates).
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |scale: f64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        #[allow(clippy::cast_precision_loss)]
        let unit = (seed >> 11) as f64 / (1_u64 << 53) as f64;
        (unit * 2.0 - 1.0) * scale
    };
    let mut matched = 0;
    for _ in 0..2_000 {
        let (lat, lon) = (next(90.0), next(180.0));
        let place = location(lat, lon);
        let (qlat, qlon) = ((lat + next(3.0)).clamp(-90.0, 90.0), {
            let l = lon + next(3.0);
            if l > 180.0 {
                l - 360.0
            } else if l < -180.0 {
                l + 360.0
            } else {
                l
            }
        });
        let km = next(300.0).abs();
        if near(&place, &format!("{qlat}|{qlon}|{km}|km")) {
            matched += 1;
        }
    }
    assert!(matched > 100, "{matched} of 2000 matched");
}

#[test]
fn near_errors_name_the_parameter_never_the_value() {
    let rt = ResourceType::parse("Location").unwrap();
    for (value, reason) in [
        ("abc|1", "invalid latitude"),
        ("42", "expected latitude|longitude|distance|units"),
        ("1|2|3|km|x", "expected latitude|longitude|distance|units"),
        ("91|0", "latitude out of range"),
        ("0|181", "longitude out of range"),
        ("0|NaN", "invalid longitude"),
        ("0|0|-1", "invalid distance"),
        ("0|0|1|parsec", "unknown distance unit (km, m or [mi_i])"),
        ("0|0|30000|km", "distance too large"),
    ] {
        assert_eq!(
            invalid(rt, &[("near", value)]),
            Some(("near", reason)),
            "{value}"
        );
    }
    let e = error(rt, &[("near", &format!("{CANARY}|1"))]);
    assert!(!e.to_string().contains(CANARY), "{e}");
    assert_eq!(unknown_modifier(rt, &[("near:exact", "0|0")]), Some("near"));
    assert!(query(rt, &[("near", "0|0")]).clauses[0].could_identify());
}

//! `near` (R4's one special parameter with an expression): `Location?near=lat|long|distance|units`
//! finds locations whose `position` is within `distance` of the point, on the WGS84 sphere
//! (great-circle distance, mean Earth radius).
//!
//! The index holds the one-degree cell of each position (`g:LAT:LONG`, the floors of the
//! degrees): it reveals which cell of about 111 km a location lies in, never the position. A
//! query's candidates are the cells its circle's bounding box touches.

use std::collections::BTreeSet;

use serde_json::Value;

use super::extract::selected;
use super::params::ParamDef;
use super::query::Sv;
use super::syntax::split_unescaped;

/// The mean Earth radius (IUGG), in metres.
const EARTH_RADIUS_M: f64 = 6_371_008.8;
/// Metres per degree of latitude (and of longitude at the equator).
const METRES_PER_DEGREE: f64 = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;
/// What "near" means when the query gives no distance (R4 leaves it to the server).
const DEFAULT_NEAR_METRES: f64 = 10_000.0;
/// The largest distance a query may ask for: half the Earth's circumference.
const MAX_NEAR_METRES: f64 = EARTH_RADIUS_M * std::f64::consts::PI;
/// Above this many one-degree cells, a query considers every location (no key set).
const MAX_CELLS: usize = 2_000;

/// `latitude|longitude[|distance[|units]]`; units `km` (the default), `m`, `[mi_i]` or `mi`.
pub(super) fn parse_near(raw: &str) -> Result<Sv, &'static str> {
    let parts = split_unescaped(raw, '|');
    let number = |s: &str| s.trim().parse::<f64>().ok().filter(|n| n.is_finite());
    let (lat, lon) = match parts.as_slice() {
        [lat, lon, ..] if parts.len() <= 4 => (
            number(lat).ok_or("invalid latitude")?,
            number(lon).ok_or("invalid longitude")?,
        ),
        _ => return Err("expected latitude|longitude|distance|units"),
    };
    if !(-90.0..=90.0).contains(&lat) {
        return Err("latitude out of range");
    }
    if !(-180.0..=180.0).contains(&lon) {
        return Err("longitude out of range");
    }
    let distance = match parts.get(2).filter(|d| !d.is_empty()) {
        Some(d) => Some(number(d).filter(|d| *d >= 0.0).ok_or("invalid distance")?),
        None => None,
    };
    let unit = match parts.get(3).map(|u| u.trim()).unwrap_or_default() {
        "" | "km" => 1_000.0,
        "m" => 1.0,
        "[mi_i]" | "mi" => 1_609.344,
        _ => return Err("unknown distance unit (km, m or [mi_i])"),
    };
    let metres = distance.map_or(DEFAULT_NEAR_METRES, |d| d * unit);
    if metres > MAX_NEAR_METRES {
        return Err("distance too large");
    }
    Ok(Sv::Near { lat, lon, metres })
}

/// Every `(latitude, longitude)` at the parameter's paths (both must be numbers).
pub(super) fn positions(def: &ParamDef, resource: &Value) -> Vec<(f64, f64)> {
    def.paths
        .iter()
        .flat_map(|path| selected(resource, &path.segs))
        .filter_map(|position| {
            let lat = position.get("latitude")?.as_f64()?;
            let lon = position.get("longitude")?.as_f64()?;
            ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)).then_some((lat, lon))
        })
        .collect()
}

/// The great-circle distance in metres (haversine).
fn distance_metres((lat1, lon1): (f64, f64), (lat2, lon2): (f64, f64)) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

/// Whether a position lies within `metres` of the point.
pub(super) fn near_matches(lat: f64, lon: f64, metres: f64, position: (f64, f64)) -> bool {
    distance_metres((lat, lon), position) <= metres
}

// Cells are whole degrees in [-90, 89] x [-180, 179]: floors that fit an i16.
#[allow(clippy::cast_possible_truncation)]
fn cell(lat: f64, lon: f64) -> (i16, i16) {
    (
        lat.floor().clamp(-90.0, 89.0) as i16,
        lon.floor().clamp(-180.0, 179.0) as i16,
    )
}

fn cell_key((lat, lon): (i16, i16)) -> String {
    format!("g:{lat}:{lon}")
}

pub(super) fn index_keys(def: &ParamDef, resource: &Value, keys: &mut BTreeSet<String>) {
    for (lat, lon) in positions(def, resource) {
        keys.insert(cell_key(cell(lat, lon)));
    }
}

/// The cells the circle's bounding box touches (a box around a pole or wider than half the
/// globe takes every longitude), or `None` above [`MAX_CELLS`].
pub(super) fn candidate_keys(lat: f64, lon: f64, metres: f64) -> Option<Vec<String>> {
    let dlat = metres / METRES_PER_DEGREE;
    let (south, north) = ((lat - dlat).max(-90.0), (lat + dlat).min(90.0));
    let widest = south.abs().max(north.abs());
    let lon_ranges: Vec<(f64, f64)> = if widest >= 89.9 {
        vec![(-180.0, 180.0)]
    } else {
        let dlon = metres / (METRES_PER_DEGREE * widest.to_radians().cos());
        if dlon >= 180.0 {
            vec![(-180.0, 180.0)]
        } else if lon - dlon < -180.0 {
            vec![(-180.0, lon + dlon), (lon - dlon + 360.0, 180.0)]
        } else if lon + dlon > 180.0 {
            vec![(lon - dlon, 180.0), (-180.0, lon + dlon - 360.0)]
        } else {
            vec![(lon - dlon, lon + dlon)]
        }
    };
    let (low_lat, high_lat) = (cell(south, 0.0).0, cell(north, 0.0).0);
    let mut keys = BTreeSet::new();
    for (west, east) in lon_ranges {
        let (low_lon, high_lon) = (cell(0.0, west).1, cell(0.0, east).1);
        for la in low_lat..=high_lat {
            for lo in low_lon..=high_lon {
                keys.insert(cell_key((la, lo)));
                if keys.len() > MAX_CELLS {
                    return None;
                }
            }
        }
    }
    Some(keys.into_iter().collect())
}

//! The built-in city catalogue: where rides happen, how popular each city is, what a ride
//! costs there.
//!
//! Popularity is deliberately skewed (a few big cities, a long tail), as in any real
//! operator's data, so per-city metrics are exercised at very different volumes.

/// A city the simulator can generate rides in.
#[derive(Clone, Debug, PartialEq)]
pub struct City {
    /// Lower-case name, as it appears in events.
    pub name: &'static str,
    /// Relative share of ride requests.
    pub weight: f64,
    /// Centre latitude.
    pub lat: f64,
    /// Centre longitude.
    pub lng: f64,
    /// Flag fare in the local price unit.
    pub base_fare: f64,
    /// Price per kilometre.
    pub per_km: f64,
}

const fn city(
    name: &'static str,
    weight: f64,
    lat: f64,
    lng: f64,
    base_fare: f64,
    per_km: f64,
) -> City {
    City {
        name,
        weight,
        lat,
        lng,
        base_fare,
        per_km,
    }
}

/// Every built-in city, most popular first (weights fall off roughly as 1/rank).
pub const CATALOGUE: [City; 12] = [
    city("london", 24.0, 51.5074, -0.1278, 3.80, 1.90),
    city("berlin", 12.0, 52.5200, 13.4050, 3.90, 1.60),
    city("paris", 8.0, 48.8566, 2.3522, 4.10, 1.70),
    city("vienna", 6.0, 48.2082, 16.3738, 3.80, 1.50),
    city("prague", 4.8, 50.0755, 14.4378, 2.50, 1.00),
    city("warsaw", 4.0, 52.2297, 21.0122, 2.20, 0.90),
    city("budapest", 3.4, 47.4979, 19.0402, 2.40, 1.00),
    city("munich", 3.0, 48.1351, 11.5820, 4.20, 1.80),
    city("bratislava", 2.7, 48.1486, 17.1077, 2.30, 0.95),
    city("krakow", 2.4, 50.0647, 19.9450, 2.00, 0.85),
    city("brno", 2.2, 49.1951, 16.6068, 2.10, 0.90),
    city("kosice", 2.0, 48.7164, 21.2611, 1.90, 0.80),
];

/// Resolves `--cities`: a number N (the N most popular built-in cities) or a comma-separated
/// list of names (built-in ones keep their data; others get the tail's weight and prices).
pub fn resolve(spec: Option<&str>) -> Result<Vec<City>, String> {
    let Some(spec) = spec.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(CATALOGUE.to_vec());
    };
    if let Ok(count) = spec.parse::<usize>() {
        if count == 0 || count > CATALOGUE.len() {
            return Err(format!(
                "--cities {count}: choose 1 to {} built-in cities, or give names",
                CATALOGUE.len()
            ));
        }
        return Ok(CATALOGUE[..count].to_vec());
    }
    let mut cities = Vec::new();
    for (rank, name) in spec.split(',').map(str::trim).enumerate() {
        if name.is_empty() {
            return Err(format!("--cities `{spec}`: empty city name"));
        }
        if cities.iter().any(|c: &City| c.name == name) {
            return Err(format!("--cities: `{name}` is listed twice"));
        }
        let known = CATALOGUE.iter().find(|c| c.name == name);
        cities.push(match known {
            Some(city) => city.clone(),
            None => {
                // An unknown city: a stable made-up location, tail popularity by list rank.
                let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
                let spread = rank as f64;
                city(
                    leaked,
                    12.0 / (rank as f64 + 1.0),
                    45.0 + spread,
                    10.0 + spread,
                    2.5,
                    1.1,
                )
            }
        });
    }
    Ok(cities)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_counts_and_names() {
        assert_eq!(resolve(None).unwrap().len(), 12);
        assert_eq!(resolve(Some("3")).unwrap()[2].name, "paris");
        let cities = resolve(Some("bratislava, atlantis")).unwrap();
        assert_eq!(cities[0], CATALOGUE[8]);
        assert_eq!(cities[1].name, "atlantis");
        assert!(resolve(Some("0")).is_err());
        assert!(resolve(Some("13")).is_err());
        assert!(resolve(Some("a,,b")).is_err());
        assert!(resolve(Some("brno,brno")).unwrap_err().contains("twice"));
    }
}

use serde_json::{Value, json};
use std::time::Instant;

const SCHEMA: &str = include_str!("../../../vendor/fhir/r4/fhir.schema.json");

fn strip(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("description");
            for (k, c) in m.iter_mut() {
                if k == "properties" {
                    if let Value::Object(props) = c {
                        for p in props.values_mut() {
                            strip(p);
                        }
                    }
                } else {
                    strip(c);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strip),
        _ => {}
    }
}

fn prep(shallow: bool) -> (Value, Vec<String>) {
    let mut s: Value = serde_json::from_str(SCHEMA).unwrap();
    let types: Vec<String> = include_str!("/tmp/r4types.txt")
        .lines()
        .map(String::from)
        .collect();
    let mut defs = s["definitions"].take();
    strip(&mut defs);
    let d = defs.as_object_mut().unwrap();
    if shallow {
        d.insert("ResourceList".into(), json!({"type":"object","required":["resourceType"],"properties":{"resourceType":{"enum": types}}}));
    } else {
        let one: Vec<Value> = types
            .iter()
            .map(|t| json!({"$ref": format!("#/definitions/{t}")}))
            .collect();
        d.insert("ResourceList".into(), json!({"oneOf": one}));
    }
    let doc = json!({"$schema": "http://json-schema.org/draft-06/schema#", "definitions": defs});
    (doc, types)
}

fn main() {
    let patient = json!({"resourceType":"Patient","id":"p1","meta":{"versionId":"1","lastUpdated":"2024-01-01T00:00:00Z"},
      "identifier":[{"system":"urn:oid:1.2.3","value":"12345"}],"active":true,
      "name":[{"use":"official","family":"Smith","given":["John","Q"]}],"telecom":[{"system":"phone","value":"555-1234","use":"home"}],
      "gender":"male","birthDate":"1970-01-01","address":[{"line":["1 Main St"],"city":"Boston","state":"MA","postalCode":"02101","country":"US"}]});
    let obs = json!({"resourceType":"Observation","id":"o1","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}],
      "code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}]},"subject":{"reference":"Patient/p1"},
      "effectiveDateTime":"2024-01-01T10:00:00Z","valueQuantity":{"value":72,"unit":"beats/minute","system":"http://unitsofmeasure.org","code":"/min"}});
    for shallow in [true, false] {
        let t0 = Instant::now();
        let (doc, types) = prep(shallow);
        let t1 = Instant::now();
        let registry = jsonschema::Registry::new()
            .add("urn:carevault:fhir:r4", doc)
            .unwrap()
            .prepare()
            .unwrap();
        let t2 = Instant::now();
        println!(
            "shallow={shallow} prep={:?} registry={:?}",
            t1 - t0,
            t2 - t1
        );
        let cache = jsonschema::PatternCache::new();
        let build = |t: &str| {
            jsonschema::options()
                .with_draft(jsonschema::Draft::Draft6)
                .with_registry(&registry)
                .with_pattern_cache(cache.clone())
                .build(&json!({"$ref": format!("urn:carevault:fhir:r4#/definitions/{t}")}))
                .unwrap()
        };
        let t = Instant::now();
        let pv = build("Patient");
        println!("  Patient first compile {:?}", t.elapsed());
        let t = Instant::now();
        let ov = build("Observation");
        println!("  Observation compile {:?}", t.elapsed());
        let t = Instant::now();
        let bv = build("Bundle");
        println!("  Bundle compile {:?}", t.elapsed());
        assert!(pv.is_valid(&patient));
        assert!(ov.is_valid(&obs));
        let n = 10000;
        let t = Instant::now();
        for _ in 0..n {
            assert!(pv.is_valid(&patient));
        }
        println!("  Patient is_valid {:?}", t.elapsed() / n);
        let t = Instant::now();
        for _ in 0..n {
            assert!(ov.is_valid(&obs));
        }
        println!("  Obs is_valid {:?}", t.elapsed() / n);
        let t = Instant::now();
        for _ in 0..n {
            assert!(pv.iter_errors(&patient).next().is_none());
        }
        println!("  Patient iter_errors {:?}", t.elapsed() / n);
        let bundle = json!({"resourceType":"Bundle","type":"collection","entry":(0..100).map(|i| if i%2==0 {json!({"resource":patient})} else {json!({"resource":obs})}).collect::<Vec<_>>()});
        let t = Instant::now();
        let ok = bv.is_valid(&bundle);
        println!("  bundle100 is_valid={ok} {:?}", t.elapsed());
        let t = Instant::now();
        let mut all = Vec::new();
        for ty in &types {
            all.push(build(ty));
        }
        println!("  all 146 compile {:?}", t.elapsed());
        let mut bad = patient.clone();
        bad["birthDate"] = json!("CANARY");
        bad["foo"] = json!(1);
        bad["name"][0]["given"][1] = json!(5);
        for e in pv.iter_errors(&bad) {
            println!(
                "   err {:?} at {} kind {:?}",
                e.kind().keyword(),
                e.instance_path(),
                e.kind()
            );
        }
        let mut bb = bundle.clone();
        bb["entry"][3]["resource"]["status"] = json!("CANARY");
        let t = Instant::now();
        for e in bv.iter_errors(&bb) {
            println!("   berr {:?} at {}", e.kind().keyword(), e.instance_path());
        }
        println!("  bundle errs {:?}", t.elapsed());
    }
}

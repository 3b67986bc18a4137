//! FHIR search over the blind index, end to end: every parameter type, paging that holds while
//! data changes, authorization filtering, includes, result controls, and no plaintext at rest.

use std::collections::BTreeSet;

use carevault_testkit::{Account, Api};
use serde_json::{Value, json};

use crate::server;

fn create(api: &Api, body: Value) -> String {
    let rtype = body["resourceType"].as_str().unwrap().to_owned();
    let r = api.post_fhir(&format!("/fhir/{rtype}"), &body);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_owned()
}

/// Every id a search returns (following `next` links), and the Bundle's total.
fn ids(api: &Api, query: &str) -> (BTreeSet<String>, Option<u64>) {
    let mut found = BTreeSet::new();
    let mut path = query.to_owned();
    let mut total = None;
    for _ in 0..100 {
        let r = api.get(&path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let bundle = r.json();
        assert_eq!(bundle["type"], "searchset");
        total = total.or(bundle["total"].as_u64());
        for e in bundle["entry"].as_array().into_iter().flatten() {
            if e["search"]["mode"] == "match" {
                assert!(
                    found.insert(e["resource"]["id"].as_str().unwrap().to_owned()),
                    "{path} repeats a result"
                );
            }
        }
        match bundle["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
        {
            Some(next) => {
                let url = next["url"].as_str().unwrap();
                path = url[url.find("/fhir/").unwrap()..].to_owned();
            }
            None => return (found, total),
        }
    }
    panic!("paging did not end");
}

fn set(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).clone()).collect()
}

struct Data {
    admin: Account,
    clin: Account,
    smith: String,
    muller: String,
    other: String,
    obs_hr: String,
    obs_bp: String,
}

fn data(srv: &carevault_testkit::TestServer) -> Data {
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.search", &["clinician"], Some("org-a"));
    let api = &clin.api;
    let org = json!({"reference": "Organization/org-a"});
    let smith = create(
        api,
        json!({"resourceType": "Patient", "name": [{"family": "Smith-Jones", "given": ["Anna", "Maria"]}], "gender": "female", "birthDate": "1984-07-12", "identifier": [{"system": "urn:mrn", "value": "MRN-001"}], "telecom": [{"system": "email", "value": "anna@example.org"}], "managingOrganization": org}),
    );
    let muller = create(
        api,
        json!({"resourceType": "Patient", "name": [{"family": "Müller", "given": ["Jürgen"]}], "gender": "male", "birthDate": "1990-02", "identifier": [{"system": "urn:mrn", "value": "MRN-002"}], "managingOrganization": org}),
    );
    let other = create(
        api,
        json!({"resourceType": "Patient", "name": [{"family": "Doe", "given": ["John"]}], "gender": "male", "birthDate": "2001-12-31", "managingOrganization": org}),
    );
    let obs = |pid: &str, code: &str, value: f64, unit: &str, date: &str| {
        json!({"resourceType": "Observation", "status": "final",
               "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
               "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
               "subject": {"reference": format!("Patient/{pid}")},
               "effectiveDateTime": date,
               "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}})
    };
    let obs_hr = create(
        api,
        obs(&smith, "8867-4", 72.0, "/min", "2024-03-15T10:00:00Z"),
    );
    let obs_bp = create(
        api,
        obs(&smith, "8480-6", 120.0, "mm[Hg]", "2023-11-02T09:30:00Z"),
    );
    create(
        api,
        obs(&muller, "8867-4", 88.0, "/min", "2024-05-01T08:00:00Z"),
    );
    Data {
        admin,
        clin,
        smith,
        muller,
        other,
        obs_hr,
        obs_bp,
    }
}

#[test]
fn every_parameter_type_finds_exactly_what_matches() {
    let srv = server();
    let d = data(&srv);
    let api = &d.clin.api;
    let q = |query: &str| ids(api, query).0;
    // string: case- and accent-insensitive prefix; :exact
    assert_eq!(q("/fhir/Patient?name=smi"), set(&[&d.smith]));
    assert_eq!(q("/fhir/Patient?family=mul"), set(&[&d.muller]));
    assert_eq!(q("/fhir/Patient?family=MÜL"), set(&[&d.muller]));
    assert_eq!(q("/fhir/Patient?given=jurg"), set(&[&d.muller]));
    assert_eq!(q("/fhir/Patient?family:exact=Müller"), set(&[&d.muller]));
    assert!(q("/fhir/Patient?family:exact=muller").is_empty());
    assert_eq!(
        q("/fhir/Patient?name=anna"),
        set(&[&d.smith]),
        "any name part"
    );
    // token
    assert_eq!(q("/fhir/Patient?gender=male"), set(&[&d.muller, &d.other]));
    assert_eq!(
        q("/fhir/Patient?identifier=urn:mrn|MRN-001"),
        set(&[&d.smith])
    );
    assert_eq!(q("/fhir/Patient?identifier=MRN-002"), set(&[&d.muller]));
    assert!(q("/fhir/Patient?identifier=urn:other|MRN-001").is_empty());
    assert_eq!(q("/fhir/Patient?email=anna@example.org"), set(&[&d.smith]));
    assert_eq!(q("/fhir/Observation?code=http://loinc.org|8867-4").len(), 2);
    assert_eq!(q("/fhir/Observation?code=8480-6"), set(&[&d.obs_bp]));
    // date with prefixes and partial precision
    assert_eq!(q("/fhir/Patient?birthdate=1984"), set(&[&d.smith]));
    assert_eq!(q("/fhir/Patient?birthdate=1984-07-12"), set(&[&d.smith]));
    assert_eq!(
        q("/fhir/Patient?birthdate=ge1990"),
        set(&[&d.muller, &d.other])
    );
    assert_eq!(q("/fhir/Patient?birthdate=lt1990-01-01"), set(&[&d.smith]));
    assert_eq!(
        q("/fhir/Patient?birthdate=ge1985&birthdate=le2000"),
        set(&[&d.muller]),
        "repeated = AND"
    );
    assert_eq!(q("/fhir/Observation?date=2024-03"), set(&[&d.obs_hr]));
    // reference
    assert_eq!(
        q(&format!("/fhir/Observation?patient={}", d.smith)),
        set(&[&d.obs_hr, &d.obs_bp])
    );
    assert_eq!(
        q(&format!("/fhir/Observation?subject=Patient/{}", d.smith)).len(),
        2
    );
    // quantity
    assert_eq!(
        q("/fhir/Observation?value-quantity=gt100|http://unitsofmeasure.org|mm[Hg]"),
        set(&[&d.obs_bp])
    );
    assert_eq!(q("/fhir/Observation?value-quantity=72||/min").len(), 1);
    assert_eq!(q("/fhir/Observation?value-quantity=lt80").len(), 1);
    // OR within a parameter, _id, combination
    assert_eq!(
        q(&format!("/fhir/Patient?_id={},{}", d.smith, d.other)),
        set(&[&d.smith, &d.other])
    );
    assert_eq!(
        q(&format!(
            "/fhir/Observation?patient={}&code=8867-4",
            d.smith
        )),
        set(&[&d.obs_hr])
    );
    // `_id` is answered by id, not from the blind index: with other clauses, repeated (AND),
    // repeated values, an unknown id, another type's id, and `:not`.
    assert_eq!(
        q(&format!(
            "/fhir/Observation?_id={},{}&code=8867-4",
            d.obs_hr, d.obs_bp
        )),
        set(&[&d.obs_hr])
    );
    assert_eq!(
        ids(
            api,
            &format!(
                "/fhir/Patient?_id={},{},{}&_id={}&_total=accurate",
                d.smith, d.other, d.smith, d.smith
            )
        ),
        (set(&[&d.smith]), Some(1))
    );
    assert!(q("/fhir/Patient?_id=no-such-patient").is_empty());
    assert!(q(&format!("/fhir/Patient?_id={}", d.obs_hr)).is_empty());
    assert!(!q(&format!("/fhir/Patient?_id:not={}", d.smith)).contains(&d.smith));
    // A deleted resource is no longer found.
    assert_eq!(
        api.delete(&format!("/fhir/Patient/{}", d.other)).status,
        204
    );
    assert_eq!(q("/fhir/Patient?gender=male"), set(&[&d.muller]));
    assert!(q(&format!("/fhir/Patient?_id={}", d.other)).is_empty());
}

#[test]
fn paging_totals_sorting_includes_and_result_controls() {
    let srv = server();
    let d = data(&srv);
    let api = &d.clin.api;
    let org = json!({"reference": "Organization/org-a"});
    let mut made = BTreeSet::new();
    for i in 0..25 {
        made.insert(create(api, json!({"resourceType": "Patient", "name": [{"family": format!("Pagetest{i:02}")}], "managingOrganization": org})));
    }
    let (found, total) = ids(
        api,
        "/fhir/Patient?family=pagetest&_count=4&_total=accurate",
    );
    assert_eq!(found, made);
    assert_eq!(total, Some(25));
    // Paging stays correct while data changes: rows added after the first page do not shift it.
    let first = api
        .get("/fhir/Patient?family=pagetest&_count=10&_sort=_id")
        .json();
    let first_ids: Vec<String> = first["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect();
    for i in 0..5 {
        create(
            api,
            json!({"resourceType": "Patient", "name": [{"family": format!("Pagetest-new{i}")}], "managingOrganization": org}),
        );
    }
    let next = first["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let (rest, _) = ids(api, &next[next.find("/fhir/").unwrap()..]);
    for id in &first_ids {
        assert!(!rest.contains(id), "a result of page one came back");
    }
    let mut all_old: BTreeSet<String> = first_ids.into_iter().collect();
    all_old.extend(rest.into_iter().filter(|id| made.contains(id)));
    assert_eq!(all_old, made, "nothing was skipped");

    // _summary=count, _sort, _elements, includes
    let count = api
        .get("/fhir/Patient?family=pagetest&_summary=count")
        .json();
    assert_eq!(count["total"], 30);
    assert!(count["entry"].as_array().unwrap().is_empty());
    let sorted = api
        .get("/fhir/Patient?gender=male,female&_sort=-birthdate")
        .json();
    let births: Vec<&str> = sorted["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["birthDate"].as_str().unwrap())
        .collect();
    assert_eq!(births, ["2001-12-31", "1990-02", "1984-07-12"]);
    let slim = api
        .get(&format!("/fhir/Patient?_id={}&_elements=gender", d.smith))
        .json();
    let resource = &slim["entry"][0]["resource"];
    assert_eq!(resource["gender"], "female");
    assert!(resource.get("name").is_none() && resource.get("birthDate").is_none());
    let with_patient = api
        .get(&format!(
            "/fhir/Observation?patient={}&_include=Observation:patient",
            d.smith
        ))
        .json();
    let modes: Vec<(&str, &str)> = with_patient["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["resource"]["resourceType"].as_str().unwrap(),
                e["search"]["mode"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        modes
            .iter()
            .filter(|m| **m == ("Observation", "match"))
            .count(),
        2
    );
    assert_eq!(
        modes
            .iter()
            .filter(|m| **m == ("Patient", "include"))
            .count(),
        1
    );
    // Each entry names its resource and embeds the stored document as a read returns it.
    for e in with_patient["entry"].as_array().unwrap() {
        let path = format!(
            "/fhir/{}/{}",
            e["resource"]["resourceType"].as_str().unwrap(),
            e["resource"]["id"].as_str().unwrap()
        );
        assert!(e["fullUrl"].as_str().unwrap().ends_with(&path), "{e}");
        assert_eq!(api.get(&path).json(), e["resource"]);
    }
    let rev = api
        .get(&format!(
            "/fhir/Patient?_id={}&_revinclude=Observation:patient",
            d.smith
        ))
        .json();
    assert_eq!(rev["entry"].as_array().unwrap().len(), 3);

    // POST _search answers the same as GET, with values kept out of the URL.
    let posted = api.request(
        "POST",
        "/fhir/Patient/_search",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(b"family=m%C3%BCl"),
    );
    assert_eq!(posted.status, 200, "{}", posted.text());
    assert_eq!(
        posted.json()["entry"][0]["resource"]["id"],
        d.muller.as_str()
    );

    // Unknown parameters: an error by default, ignored under Prefer: handling=lenient.
    let strict = api.get("/fhir/Patient?colour=CANARY-RED");
    assert_eq!(strict.status, 400);
    assert!(!strict.text().contains("CANARY-RED"));
    let lenient = api.request(
        "GET",
        "/fhir/Patient?colour=red&gender=male",
        &[("Prefer", "handling=lenient")],
        None,
    );
    assert_eq!(lenient.status, 200);
    assert_eq!(api.get("/fhir/Patient?birthdate=notadate").status, 400);
    assert_eq!(api.get("/fhir/Patient?_page=garbage").status, 400);
}

#[test]
fn search_honors_authorization_and_is_audited_with_the_patients_returned() {
    let srv = server();
    let d = data(&srv);
    let admin = &d.admin;
    let other_org = srv.user(admin, "dr.elsewhere", &["clinician"], Some("org-b"));
    let auditor = srv.user(admin, "ann.auditor", &["auditor"], None);
    let (seen, total) = ids(
        &other_org.api,
        "/fhir/Patient?gender=male,female&_total=accurate",
    );
    assert!(
        seen.is_empty(),
        "another organization's patients are not found"
    );
    assert_eq!(total, Some(0), "and not counted");
    assert_eq!(
        ids(
            &other_org.api,
            &format!("/fhir/Observation?patient={}", d.smith)
        )
        .0
        .len(),
        0
    );
    assert_eq!(admin.api.get("/fhir/Patient?gender=male").status, 403);
    let (mine, _) = ids(&d.clin.api, "/fhir/Patient?gender=male,female");
    assert_eq!(mine.len(), 3);
    let trail = auditor
        .api
        .get(&format!(
            "/audit/events?patient={}&action=search-type",
            d.smith
        ))
        .json();
    assert!(
        !trail["entry"].as_array().unwrap().is_empty(),
        "searches record the patients returned"
    );
}

/// Without `_sort` or a total, a search opens candidates in id order only until its page is
/// full; paging must still return exactly what the caller may read, once each.
#[test]
fn id_order_paging_returns_exactly_the_readable_matches() {
    let srv = server();
    let admin = srv.admin();
    let a = srv.user(&admin, "dr.page-a", &["clinician"], Some("org-a"));
    let b = srv.user(&admin, "dr.page-b", &["clinician"], Some("org-b"));
    let mut expected = [BTreeSet::new(), BTreeSet::new()];
    // More than one window of candidates (32) for each caller, so a page is assembled from
    // several, with the other organization's patients left out before they are opened.
    for i in 0..80 {
        let (who, org, k) = if i % 3 == 0 {
            (&b, "org-b", 1)
        } else {
            (&a, "org-a", 0)
        };
        expected[k].insert(create(
            &who.api,
            json!({"resourceType": "Patient", "name": [{"family": format!("Interleave{i:02}")}], "managingOrganization": {"reference": format!("Organization/{org}")}}),
        ));
    }
    for (account, mine) in [(&a, &expected[0]), (&b, &expected[1])] {
        let (found, total) = ids(&account.api, "/fhir/Patient?name=interl&_count=3");
        assert_eq!(&found, mine);
        assert_eq!(total, None, "no total unless asked for");
        let (found, total) = ids(
            &account.api,
            "/fhir/Patient?name=interl&_count=3&_total=accurate",
        );
        assert_eq!(&found, mine);
        assert_eq!(total, Some(mine.len() as u64));
    }
    // The first page is the smallest ids the caller may read, in order.
    let first = a.api.get("/fhir/Patient?name=interl&_count=5").json();
    let page: Vec<String> = first["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect();
    let smallest: Vec<String> = expected[0].iter().take(5).cloned().collect();
    assert_eq!(page, smallest);
}

#[test]
fn the_index_holds_no_plaintext() {
    let mut srv = server();
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.index", &["clinician"], Some("org-a"));
    let canaries = ["Zyxwvutsrq", "Qwertzuiopy", "CANARY-ID-7731"];
    let pid = create(
        &clin.api,
        json!({"resourceType": "Patient", "name": [{"family": canaries[0], "given": [canaries[1]]}], "identifier": [{"value": canaries[2]}], "managingOrganization": {"reference": "Organization/org-a"}}),
    );
    assert_eq!(ids(&clin.api, "/fhir/Patient?family=zyxw").0.len(), 1);
    assert_eq!(
        ids(
            &clin.api,
            &format!("/fhir/Patient?identifier={}", canaries[2])
        )
        .0,
        set(&[&pid])
    );
    srv.stop();
    let mut forms = Vec::new();
    for c in canaries {
        for v in [
            c.to_owned(),
            c.to_lowercase(),
            c.to_uppercase(),
            c[..6].to_lowercase(),
        ] {
            forms.push(v.clone().into_bytes());
            forms.push(
                data_encoding::BASE64
                    .encode(v.as_bytes())
                    .trim_end_matches('=')
                    .as_bytes()
                    .to_vec(),
            );
            forms.push(data_encoding::HEXLOWER.encode(v.as_bytes()).into_bytes());
            forms.push(data_encoding::HEXUPPER.encode(v.as_bytes()).into_bytes());
        }
    }
    // Every file of the data directory and, on PostgreSQL, a dump of the database.
    for (file, bytes) in srv.at_rest() {
        for f in &forms {
            assert!(
                !bytes.windows(f.len()).any(|w| w == f.as_slice()),
                "{} holds {}",
                file,
                String::from_utf8_lossy(f)
            );
        }
    }
}

/// Parameters from R4's SearchParameter definitions (beyond the 46 of the first table), through
/// the API; and data indexed before the definitions changed is indexed again at start.
#[test]
fn r4_parameters_search_and_data_indexed_before_them_is_found_after_a_restart() {
    let mut srv = server();
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.r4", &["clinician"], Some("org-a"));
    let api = &clin.api;
    let org = json!({"reference": "Organization/org-a"});
    let profile = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient";
    let alive = create(
        api,
        json!({"resourceType": "Patient", "name": [{"family": "Alive"}], "deceasedBoolean": false,
               "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                               "system": "urn:mrn", "value": "MR-77"}],
               "address": [{"city": "Springfield", "postalCode": "12345"}],
               "meta": {"tag": [{"system": "urn:t", "code": "vip"}], "profile": [profile]},
               "managingOrganization": org}),
    );
    let dead = create(
        api,
        json!({"resourceType": "Patient", "name": [{"family": "Gone"}],
               "deceasedDateTime": "2020-01-01", "managingOrganization": org}),
    );
    let enc = create(
        api,
        json!({"resourceType": "Encounter", "status": "finished",
               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
               "subject": {"reference": format!("Patient/{alive}")}}),
    );
    let obs = create(
        api,
        json!({"resourceType": "Observation", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
               "subject": {"reference": format!("Patient/{alive}")},
               "encounter": {"reference": format!("Encounter/{enc}")},
               "valueString": "positive"}),
    );
    let sequence = create(
        api,
        json!({"resourceType": "MolecularSequence", "coordinateSystem": 0,
               "patient": {"reference": format!("Patient/{dead}")},
               "referenceSeq": {"windowStart": 100, "windowEnd": 200}}),
    );
    let response = create(
        api,
        json!({"resourceType": "QuestionnaireResponse", "status": "completed",
               "questionnaire": "http://example.org/Questionnaire/phq-9|2.0",
               "subject": {"reference": format!("Patient/{alive}")}}),
    );
    let years = |v: i64| json!({"value": v, "system": "http://unitsofmeasure.org", "code": "a"});
    let condition = create(
        api,
        json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{alive}")},
               "onsetRange": {"low": years(40), "high": years(50)}}),
    );
    let check = |api: &Api| {
        let q = |query: &str| ids(api, query).0;
        // An age that is a Range: some of it above 45, none of it above 50.
        assert_eq!(q("/fhir/Condition?onset-age=gt45"), set(&[&condition]));
        assert!(q("/fhir/Condition?onset-age=gt50").is_empty());
        assert_eq!(
            q(&format!("/fhir/Encounter?subject=Patient/{alive}")),
            set(&[&enc])
        );
        // A reference by canonical URL: any version, or the one named.
        let phq9 = "http://example.org/Questionnaire/phq-9";
        assert_eq!(
            q(&format!("/fhir/QuestionnaireResponse?questionnaire={phq9}")),
            set(&[&response])
        );
        assert_eq!(
            q(&format!(
                "/fhir/QuestionnaireResponse?questionnaire={phq9}%7C2.0"
            )),
            set(&[&response])
        );
        assert!(
            q(&format!(
                "/fhir/QuestionnaireResponse?questionnaire={phq9}%7C1.0"
            ))
            .is_empty()
        );
        assert_eq!(q("/fhir/Patient?deceased=true"), set(&[&dead]));
        assert_eq!(q("/fhir/Patient?deceased=false"), set(&[&alive]));
        assert_eq!(q("/fhir/Patient?address-city=springf"), set(&[&alive]));
        assert_eq!(q("/fhir/Patient?address-postalcode=12345"), set(&[&alive]));
        assert_eq!(q("/fhir/Patient?_tag=urn:t|vip"), set(&[&alive]));
        assert_eq!(
            q(&format!("/fhir/Patient?_profile={profile}")),
            set(&[&alive])
        );
        assert_eq!(
            q("/fhir/Patient?_profile:below=http://hl7.org/fhir/us/core/"),
            set(&[&alive])
        );
        assert!(q("/fhir/Patient?_profile=http://hl7.org/fhir/us/core/").is_empty());
        assert_eq!(
            q(&format!("/fhir/Observation?encounter=Encounter/{enc}")),
            set(&[&obs])
        );
        assert_eq!(q("/fhir/Observation?value-string=pos"), set(&[&obs]));
        assert_eq!(
            q(
                "/fhir/Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|MR-77"
            ),
            set(&[&alive])
        );
        assert!(
            q("/fhir/Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|SS|MR-77")
                .is_empty()
        );
        assert_eq!(
            q("/fhir/MolecularSequence?window-start=gt99"),
            set(&[&sequence])
        );
        assert_eq!(
            q("/fhir/MolecularSequence?window-start=1e2"),
            set(&[&sequence])
        );
        assert!(q("/fhir/MolecularSequence?window-start=lt100").is_empty());
    };
    check(api);
    // A parameter R4 defines that CareVault leaves out (a composite R4 defines outside its base
    // element) is refused by name, as an unknown one is.
    let r = api.get("/fhir/MolecularSequence?chromosome-variant-coordinate=1$gt70$lt80");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("chromosome-variant-coordinate"),
        "{}",
        r.text()
    );

    // As if written by a release that knew none of these parameters: the index is empty and
    // marked as built from other definitions. The restart rebuilds it.
    srv.stop();
    let forget = if srv.is_postgres() {
        "DELETE FROM search_index;"
    } else {
        "DELETE FROM search_index; DELETE FROM search_keys;"
    };
    srv.execute(&format!(
        "{forget} UPDATE meta SET value = 'r4-0-older' WHERE key = 'search_index_definitions';"
    ));
    srv.restart(&[]);
    srv.wait_for_log("search_reindex_finished");
    check(api);
}

/// Composite parameters through the API: code and value must hold within one component, and the
/// candidates come from the host's rows (`combo-code`), before and after an index rebuild. And
/// `Location?near`, R4's special parameter.
#[test]
fn composite_and_near_parameters() {
    let mut srv = server();
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.composite", &["clinician"], Some("org-a"));
    let api = &clin.api;
    let patient = create(
        api,
        json!({"resourceType": "Patient", "managingOrganization": {"reference": "Organization/org-a"}}),
    );
    let mm_hg =
        |v: i64| json!({"value": v, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"});
    let loinc = |code: &str| json!({"coding": [{"system": "http://loinc.org", "code": code}]});
    let pressure = create(
        api,
        json!({"resourceType": "Observation", "status": "final", "code": loinc("85354-9"),
               "subject": {"reference": format!("Patient/{patient}")},
               "component": [{"code": loinc("8480-6"), "valueQuantity": mm_hg(150)},
                             {"code": loinc("8462-4"), "valueQuantity": mm_hg(95)}]}),
    );
    let pulse = create(
        api,
        json!({"resourceType": "Observation", "status": "final", "code": loinc("8867-4"),
               "subject": {"reference": format!("Patient/{patient}")},
               "valueQuantity": {"value": 72, "system": "http://unitsofmeasure.org", "code": "/min"}}),
    );
    let clinic = create(
        api,
        json!({"resourceType": "Location", "name": "Cambridge clinic",
               "position": {"latitude": 42.3736, "longitude": -71.1097}}),
    );
    create(
        api,
        json!({"resourceType": "Location", "name": "New York clinic",
               "position": {"latitude": 40.7128, "longitude": -74.0060}}),
    );
    let check = |api: &Api| {
        let q = |query: &str| ids(api, query).0;
        assert_eq!(
            q("/fhir/Location?near=42.3601%7C-71.0589%7C5%7Ckm"),
            set(&[&clinic])
        );
        assert!(q("/fhir/Location?near=42.3601|-71.0589|4|km").is_empty());
        // `|` and `$` percent-encoded, as clients send them.
        assert_eq!(
            q("/fhir/Observation?component-code-value-quantity=http://loinc.org%7C8480-6%24gt140"),
            set(&[&pressure])
        );
        assert!(
            q("/fhir/Observation?component-code-value-quantity=http://loinc.org%7C8462-4%24gt140")
                .is_empty()
        );
        assert_eq!(
            q("/fhir/Observation?combo-code-value-quantity=8462-4$95,8867-4$72"),
            set(&[&pressure, &pulse])
        );
        assert_eq!(
            q("/fhir/Observation?code-value-quantity=8867-4$lt100"),
            set(&[&pulse])
        );
        assert!(q("/fhir/Observation?code-value-quantity=8480-6$150").is_empty());
    };
    check(api);
    for bad in [
        "/fhir/Observation?code-value-quantity=8480-6",
        "/fhir/Observation?code-value-quantity=8480-6$x$y",
        "/fhir/Observation?code-value-quantity:exact=8480-6$1",
        "/fhir/Location?near=91|0|1|km",
    ] {
        let r = api.get(bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        let name = if bad.contains("near") {
            "near"
        } else {
            "code-value-quantity"
        };
        assert!(r.text().contains(name), "{}", r.text());
        assert!(!r.text().contains("8480-6"), "{}", r.text());
    }
    srv.stop();
    srv.execute("UPDATE meta SET value = 'r4-0-older' WHERE key = 'search_index_definitions';");
    srv.restart(&[]);
    srv.wait_for_log("search_reindex_finished");
    check(api);
}

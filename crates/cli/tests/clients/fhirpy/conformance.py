"""A standard FHIR client against CareVault: fhirpy's SyncFHIRClient, used as its README shows.

It saves, reads, updates and deletes resources, updates and deletes conditionally through a
search set, posts a transaction to the base (fhirpy sends `POST /fhir/?`), fetches every page of
a search through its `next` links, searches by chain and `_has`, counts, narrows with
`_elements`, includes, and validates. crates/cli/tests/it/fhir_clients.rs drives it.

    CAREVAULT_TOKEN=... python3 conformance.py BASE_URL CA_PEM TAG ORGANIZATION

BASE_URL is the FHIR base (https://host:port/fhir); CA_PEM the certificate that signed the
server's; TAG makes this run's identifiers and names unique; ORGANIZATION is the caller's
organization id. The token comes from the environment (never argv). The last line of standard
output is a JSON report: what each step saw and the exchange on the wire (method, path, query,
status; never a header or a body), for the test to check.
"""

import json
import os
import sys
from urllib.parse import urlsplit

import requests
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import BaseFHIRError, ResourceNotFound
from fhirpy.base.searchset import Raw

MRN = "urn:oid:1.2.36.146.595.217.0.1"
LOINC = "http://loinc.org"


def main():
    if len(sys.argv) != 5 or not os.environ.get("CAREVAULT_TOKEN"):
        print("usage: CAREVAULT_TOKEN=... python3 conformance.py BASE_URL CA_PEM TAG ORGANIZATION",
              file=sys.stderr)
        return 2
    base_url, ca_pem, tag, organization = sys.argv[1:]

    # fhirpy's sync client calls requests.request; this notes each exchange on the wire.
    wire = []
    plain_request = requests.request

    def recording_request(method, url, **kwargs):
        response = plain_request(method, url, **kwargs)
        parts = urlsplit(url)
        wire.append({
            "method": method.upper(),
            "path": parts.path,
            "query": parts.query,
            "status": response.status_code,
        })
        return response

    requests.request = recording_request
    client = SyncFHIRClient(
        base_url,
        authorization="Bearer " + os.environ["CAREVAULT_TOKEN"],
        requests_config={"verify": ca_pem},
    )
    report = {"wire": wire}

    def patient(family, mrn):
        return client.resource(
            "Patient",
            identifier=[{"system": MRN, "value": mrn}],
            name=[{"family": family, "given": ["Grace"]}],
            gender="male",
            birthDate="1960-06-06",
            managingOrganization={"reference": f"Organization/{organization}"},
        )

    # Create, read, update, refresh.
    mrn = f"PY-{tag}"
    created = patient(f"Pyfamily{tag}", mrn)
    created.save()
    pid = created.id
    read = client.reference("Patient", pid).to_resource()
    read["birthDate"] = "1961-07-07"
    read.save()
    again = client.reference("Patient", pid).to_resource()
    report["crud"] = {
        "id": pid,
        "createdVersion": created.meta.versionId,
        "readFamily": read.name[0].family,
        "updatedVersion": read.meta.versionId,
        "updatedBirthDate": again.birthDate,
    }

    # Conditional update through a search set (PUT /fhir/Patient?identifier=...), and a search
    # that must find exactly one.
    criteria = f"{MRN}|{mrn}"
    replacement = patient(f"Pyfamily{tag}", mrn)
    replacement["gender"] = "other"
    updated, created_by_update = client.resources("Patient").search(identifier=criteria).update(
        replacement)
    one = client.resources("Patient").search(identifier=criteria).get()
    report["conditional"] = {
        "updatedId": updated.id,
        "createdByUpdate": created_by_update,
        "updatedVersion": updated.meta.versionId,
        "foundId": one.id,
        "foundGender": one.gender,
    }

    # A transaction posted to the base: a patient and ten observations naming it by urn:uuid.
    chain_family = f"Pychain{tag}"
    urn = "urn:uuid:0b7c5a52-1d7e-4e44-a3f1-5c9e2d8b6a10"
    entries = [{
        "fullUrl": urn,
        "resource": patient(chain_family, f"PY2-{tag}").serialize(),
        "request": {"method": "POST", "url": "Patient"},
    }]
    for i in range(10):
        entries.append({
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": "8867-4"}]},
                "subject": {"reference": urn},
                "valueQuantity": {"value": 70 + i, "unit": "beats/minute",
                                  "system": "http://unitsofmeasure.org", "code": "/min"},
            },
            "request": {"method": "POST", "url": "Observation"},
        })
    transaction = client.execute("/", method="post",
                                 data={"resourceType": "Bundle", "type": "transaction",
                                       "entry": entries})
    chain_patient = transaction["entry"][0]["response"]["location"].split("/")[1]
    report["transaction"] = {
        "type": transaction["type"],
        "statuses": [e["response"]["status"] for e in transaction["entry"]],
        "chainPatient": chain_patient,
    }

    # Searches: every page through `next` links, four at a time; a chain; _has; a count;
    # _elements; _revinclude.
    observations = client.resources("Observation")
    by_subject = observations.search(subject=f"Patient/{chain_patient}").limit(4).fetch_all()
    chained = observations.search(subject__Patient__family=chain_family).limit(4).fetch_all()
    has = (client.resources("Patient").search(family=chain_family)
           .has("Observation", "subject", code=f"{LOINC}|8867-4").fetch())
    count = observations.search(subject=f"Patient/{chain_patient}").count()
    narrow = client.resources("Patient").search(_id=chain_patient).elements("gender").first()
    with_observations = (client.resources("Patient").search(_id=chain_patient)
                         .revinclude("Observation", "subject").limit(50).fetch_raw())
    report["search"] = {
        "bySubject": sorted(o.id for o in by_subject),
        "chained": sorted(o.id for o in chained),
        "has": [p.id for p in has],
        "count": count,
        "elementsKeys": sorted(k for k in narrow.serialize() if k != "meta"),
        "revinclude": sorted(e["search"]["mode"] + ":" + e["resource"]["resourceType"]
                             for e in with_observations["entry"]),
    }

    # $validate: a valid resource and an invalid one.
    invalid = patient("Pyinvalid", f"PY3-{tag}")
    invalid["gender"] = "banana"
    report["validate"] = {
        "valid": patient("Pyvalid", f"PY3-{tag}").is_valid(),
        "invalid": invalid.is_valid(),
    }

    # Refusals: an unknown search parameter.
    try:
        client.resources("Patient").search(Raw(**{"no-such-parameter": "x"})).fetch()
        report["unknownParameter"] = "accepted"
    except BaseFHIRError as e:
        report["unknownParameter"] = type(e).__name__

    # Delete, and conditional delete through a search set.
    created.delete()
    try:
        client.reference("Patient", pid).to_resource()
        report["readDeleted"] = "found"
    except ResourceNotFound:
        report["readDeleted"] = "ResourceNotFound"
    client.resources("Patient").search(identifier=f"{MRN}|PY2-{tag}").delete()
    report["conditionallyDeleted"] = client.resources("Patient").search(
        identifier=f"{MRN}|PY2-{tag}").fetch() == []

    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

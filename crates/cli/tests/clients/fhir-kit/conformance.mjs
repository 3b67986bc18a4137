// A standard FHIR client against CareVault: fhir-kit-client's Client, used as its README shows,
// runs CRUD, JSON Patch, the conditional interactions, a transaction and a batch posted to the
// base, searches paged through `next` links, a chained search, `_has`, system search and
// history, `$validate`, and the refusals a client meets (an unknown parameter, XML).
// crates/cli/tests/it/fhir_clients.rs drives it.
//
//   CAREVAULT_TOKEN=... node conformance.mjs BASE_URL TAG ORGANIZATION
//
// BASE_URL is the FHIR base (https://host:port/fhir); TAG makes this run's identifiers and
// names unique; ORGANIZATION is the caller's organization id. The token comes from the
// environment (never argv). The last line of standard output is a JSON report: what each step
// saw (ids, versions, counts, statuses) and the exchange on the wire (method, path, query,
// status; never a header or a body), for the test to check.

import { Client } from 'fhir-kit-client';

const [baseUrl, tag, organization] = process.argv.slice(2);
const token = process.env.CAREVAULT_TOKEN;
if (!baseUrl || !tag || !organization || !token) {
  console.error('usage: CAREVAULT_TOKEN=... node conformance.mjs BASE_URL TAG ORGANIZATION');
  process.exit(2);
}

// The client calls the global fetch; this notes each exchange on the wire.
const wire = [];
const nodeFetch = globalThis.fetch;
globalThis.fetch = async (request, init) => {
  const response = await nodeFetch(request, init);
  const u = new URL(request.url ?? request);
  wire.push({
    method: request.method ?? init?.method ?? 'GET',
    path: u.pathname,
    query: u.search,
    status: response.status,
  });
  return response;
};

const MRN = 'urn:oid:1.2.36.146.595.217.0.1';
const LOINC = 'http://loinc.org';
const client = new Client({ baseUrl, bearerToken: token });
const report = { wire };

// The status of a request the client rejects (fhir-kit-client throws on any non-2xx status).
async function refused(promise) {
  try {
    await promise;
    return { status: 'accepted' };
  } catch (e) {
    const data = e.response?.data;
    return { status: e.response?.status ?? String(e), outcome: data?.resourceType ?? null };
  }
}

// Every page of a search, through the Bundle's `next` links.
async function allPages(first) {
  const ids = [];
  let pages = 0;
  let bundle = await first;
  while (bundle) {
    pages += 1;
    for (const entry of bundle.entry ?? []) {
      if (entry.search?.mode !== 'include') ids.push(entry.resource.id);
    }
    bundle = await client.nextPage({ bundle });
  }
  return { ids, pages };
}

function patient(family, mrn) {
  return {
    resourceType: 'Patient',
    identifier: [{ system: MRN, value: mrn }],
    name: [{ family, given: ['Ada'] }],
    gender: 'female',
    birthDate: '1970-01-01',
    managingOrganization: { reference: `Organization/${organization}` },
  };
}

function heartRate(subject, value) {
  return {
    resourceType: 'Observation',
    status: 'final',
    code: { coding: [{ system: LOINC, code: '8867-4', display: 'Heart rate' }] },
    subject: { reference: subject },
    valueQuantity: { value, unit: 'beats/minute', system: 'http://unitsofmeasure.org', code: '/min' },
  };
}

// The CapabilityStatement.
const cs = await client.capabilityStatement();
const patientRest = cs.rest[0].resource.find((r) => r.type === 'Patient');
report.capability = {
  fhirVersion: cs.fhirVersion,
  format: cs.format,
  patientInteractions: patientRest.interaction.map((i) => i.code).sort(),
  conditionalCreate: patientRest.conditionalCreate,
  conditionalUpdate: patientRest.conditionalUpdate,
  conditionalDelete: patientRest.conditionalDelete,
  systemInteractions: cs.rest[0].interaction.map((i) => i.code).sort(),
};

// Create, read, update, JSON Patch, vread.
const mrn = `KIT-${tag}`;
const created = await client.create({ resourceType: 'Patient', body: patient(`Kitfamily${tag}`, mrn) });
const id = created.id;
const read = await client.read({ resourceType: 'Patient', id });
const updated = await client.update({
  resourceType: 'Patient',
  id,
  body: { ...read, gender: 'other' },
});
const patched = await client.patch({
  resourceType: 'Patient',
  id,
  jsonPatch: [
    { op: 'test', path: '/gender', value: 'other' },
    { op: 'replace', path: '/birthDate', value: '1971-02-03' },
  ],
});
const failedPatch = await refused(
  client.patch({
    resourceType: 'Patient',
    id,
    jsonPatch: [
      { op: 'test', path: '/gender', value: 'male' },
      { op: 'replace', path: '/birthDate', value: '1999-09-09' },
    ],
  }),
);
const afterFailedPatch = await client.read({ resourceType: 'Patient', id });
const first = await client.vread({ resourceType: 'Patient', id, version: '1' });
report.crud = {
  id,
  createdVersion: created.meta.versionId,
  readFamily: read.name[0].family,
  updatedVersion: updated.meta.versionId,
  updatedGender: updated.gender,
  patchedVersion: patched.meta.versionId,
  patchedBirthDate: patched.birthDate,
  failedPatch,
  afterFailedPatch: [afterFailedPatch.meta.versionId, afterFailedPatch.birthDate],
  version1Gender: first.gender,
};

// Conditional create, update and read.
const criteria = `${MRN}|${mrn}`;
const conditionalCreate = await client.create({
  resourceType: 'Patient',
  body: patient(`Kitfamily${tag}`, mrn),
  options: { headers: { 'If-None-Exist': `identifier=${criteria}` } },
});
const conditionalUpdate = await client.update({
  resourceType: 'Patient',
  searchParams: { identifier: criteria },
  body: { ...patient(`Kitfamily${tag}`, mrn), birthDate: '1972-03-04' },
});
const notModified = await refused(
  client.read({
    resourceType: 'Patient',
    id,
    options: { headers: { 'If-None-Match': `W/"${conditionalUpdate.meta.versionId}"` } },
  }),
);
const elements = await client.request(`Patient/${id}?_elements=gender`);
const summaryText = await client.request(`Patient/${id}?_summary=text`);
report.conditional = {
  createdId: conditionalCreate.id,
  updatedId: conditionalUpdate.id,
  updatedVersion: conditionalUpdate.meta.versionId,
  updatedBirthDate: conditionalUpdate.birthDate,
  notModified,
  elementsKeys: Object.keys(elements).filter((k) => k !== 'meta').sort(),
  summaryTextKeys: Object.keys(summaryText).filter((k) => k !== 'meta').sort(),
};

// A transaction posted to the base: a patient and twelve observations that name it by its
// urn:uuid, which the server resolves to the id it assigns.
const chainFamily = `Kitchain${tag}`;
const patientUrn = 'urn:uuid:7f6a0e1c-57a4-4f0e-9d0c-0a1b2c3d4e5f';
const transaction = await client.transaction({
  body: {
    resourceType: 'Bundle',
    type: 'transaction',
    entry: [
      {
        fullUrl: patientUrn,
        resource: patient(chainFamily, `KIT2-${tag}`),
        request: { method: 'POST', url: 'Patient' },
      },
      ...Array.from({ length: 12 }, (_, i) => ({
        resource: heartRate(patientUrn, 60 + i),
        request: { method: 'POST', url: 'Observation' },
      })),
    ],
  },
});
const chainPatient = transaction.entry[0].response.location.split('/')[1];
// A batch: a read, a create and a read of nothing, each answered on its own.
const batch = await client.batch({
  body: {
    resourceType: 'Bundle',
    type: 'batch',
    entry: [
      { request: { method: 'GET', url: `Patient/${id}` } },
      { resource: heartRate(`Patient/${id}`, 99), request: { method: 'POST', url: 'Observation' } },
      { request: { method: 'GET', url: 'Patient/no-such-patient' } },
    ],
  },
});
report.bundles = {
  transactionType: transaction.type,
  transactionStatuses: transaction.entry.map((e) => e.response.status),
  chainPatient,
  batchType: batch.type,
  batchStatuses: batch.entry.map((e) => e.response.status),
};

// Searches, each paged through its `next` links five at a time.
const bySubject = await allPages(
  client.search({
    resourceType: 'Observation',
    searchParams: { subject: `Patient/${chainPatient}`, _count: 5 },
  }),
);
const chained = await allPages(
  client.search({
    resourceType: 'Observation',
    searchParams: { 'subject:Patient.family': chainFamily, _count: 5 },
  }),
);
const has = await allPages(
  client.search({
    resourceType: 'Patient',
    searchParams: { '_has:Observation:subject:code': `${LOINC}|8867-4`, family: chainFamily },
  }),
);
const system = await allPages(
  client.search({ searchParams: { _type: 'Patient', identifier: `${MRN}|KIT2-${tag}` } }),
);
const history = await client.history({ resourceType: 'Patient', id });
const systemHistory = await client.history();
report.search = {
  bySubject,
  chained,
  has: has.ids,
  system: system.ids,
  historyVersions: history.entry.map((e) => e.resource?.meta?.versionId ?? null),
  systemHistoryType: systemHistory.type,
};

// $validate: 200 with an OperationOutcome, valid or not; nothing is stored.
const valid = await client.operation({
  name: '$validate',
  resourceType: 'Patient',
  input: patient('Kitvalid', `KIT3-${tag}`),
});
const invalid = await client.operation({
  name: '$validate',
  resourceType: 'Patient',
  input: { ...patient('Kitinvalid', `KIT3-${tag}`), gender: 'banana' },
});
report.validate = {
  valid: valid.issue.map((i) => i.severity),
  invalid: invalid.issue.map((i) => i.severity),
};

// Refusals: an unknown search parameter, XML asked for.
report.refusals = {
  unknownParameter: await refused(
    client.search({ resourceType: 'Patient', searchParams: { 'no-such-parameter': 'x' } }),
  ),
  xml: await refused(
    client.read({ resourceType: 'Patient', id, options: { headers: { accept: 'application/fhir+xml' } } }),
  ),
};

// Delete, and conditional delete of the transaction's patient by its identifier.
await client.delete({ resourceType: 'Patient', id });
const readDeleted = await refused(client.read({ resourceType: 'Patient', id }));
await client.request(`Patient?identifier=${encodeURIComponent(`${MRN}|KIT2-${tag}`)}`, {
  method: 'DELETE',
});
const readConditionallyDeleted = await refused(
  client.read({ resourceType: 'Patient', id: chainPatient }),
);
report.delete = { readDeleted, readConditionallyDeleted };

console.log(JSON.stringify(report));

// A standard bulk-data client against CareVault: @medplum/core's MedplumClient.bulkExport runs
// the async $export flow (kick-off with `Prefer: respond-async`, polling the Content-Location
// status URL, the completion manifest), and MedplumClient.download fetches every output file
// the manifest lists with the same bearer token. crates/cli/tests/it/bulk_client.rs drives it.
//
//   CAREVAULT_BULK_TOKEN=... node export.mjs BASE_URL OUT_DIR TYPES
//
// The token comes from the environment (never argv, which other users of the machine can
// read). OUT_DIR receives manifest.json and one NDJSON file per output, named as in its URL,
// which is what `carevault import OUT_DIR` reads. The last line of standard output is a JSON
// summary of the exchange on the wire (methods, paths, statuses and the async headers; never
// a header that carries the token) for the test to check.

import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { MedplumClient } from '@medplum/core';

const [baseUrl, outDir, types] = process.argv.slice(2);
const token = process.env.CAREVAULT_BULK_TOKEN;
if (!baseUrl || !outDir || !types || !token) {
  console.error('usage: CAREVAULT_BULK_TOKEN=... node export.mjs BASE_URL OUT_DIR TYPES');
  process.exit(2);
}

// Node's own fetch, wrapped to note what went over the wire.
const wire = [];
async function recordingFetch(url, init = {}) {
  const response = await fetch(url, init);
  const u = new URL(url);
  const headers = init.headers ?? {};
  wire.push({
    method: init.method ?? 'GET',
    path: u.pathname,
    query: u.search,
    prefer: headers.Prefer ?? null,
    accept: headers.Accept ?? null,
    contentType: headers['Content-Type'] ?? null,
    hasBody: init.body !== undefined && init.body !== null,
    bearer: typeof headers.Authorization === 'string' && headers.Authorization.startsWith('Bearer '),
    status: response.status,
    contentLocation: response.headers.get('content-location'),
    retryAfter: response.headers.get('retry-after'),
    progress: response.headers.get('x-progress'),
  });
  return response;
}

const medplum = new MedplumClient({ baseUrl, fhirUrlPath: 'fhir', fetch: recordingFetch });
// An opaque CareVault token: not a JWT, so the client knows no expiry and never refreshes.
medplum.setAccessToken(token);

// System-level export of TYPES; without pollStatusOnAccepted, bulkExport returns the 202's
// body instead of polling.
const manifest = await medplum.bulkExport('', types, undefined, { pollStatusOnAccepted: true });
if (!manifest || !Array.isArray(manifest.output)) {
  console.error('the export did not answer with a completion manifest');
  process.exit(1);
}

await mkdir(outDir, { recursive: true, mode: 0o700 });
for (const output of manifest.output) {
  const name = new URL(output.url).pathname.split('/').pop();
  if (!/^[A-Za-z]+\.ndjson$/.test(name)) {
    console.error('the manifest lists an output whose URL names no NDJSON file');
    process.exit(1);
  }
  const body = await (await medplum.download(output.url)).text();
  const lines = body.split('\n').filter((line) => line.trim() !== '');
  if (lines.length !== output.count) {
    console.error(`${name}: ${lines.length} resources, the manifest says ${output.count}`);
    process.exit(1);
  }
  await writeFile(join(outDir, name), body, { mode: 0o600 });
}
await writeFile(join(outDir, 'manifest.json'), JSON.stringify(manifest, null, 2), { mode: 0o600 });
console.log(JSON.stringify({ outputs: manifest.output.length, wire }));

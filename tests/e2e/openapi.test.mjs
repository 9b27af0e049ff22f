// The HTTP API's OpenAPI document, as the running server serves it, validated against the
// official OpenAPI 3.x JSON schema (@seriousme/openapi-schema-validator), and checked for the
// routes and security the API promises.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Validator } from "@seriousme/openapi-schema-validator";
import { startServer } from "./server.mjs";

let server, base;

before(async () => {
  server = await startServer();
  base = server.base;
});

after(async () => {
  await server?.stop();
});

test("the served OpenAPI document is valid OpenAPI 3", async () => {
  const res = await fetch(base + "/v1/openapi.json");
  assert.equal(res.status, 200);
  const doc = await res.json();
  const validator = new Validator();
  const result = await validator.validate(doc);
  assert.ok(result.valid, JSON.stringify(result.errors, null, 2));
  assert.match(doc.openapi, /^3\./);
});

test("the document covers every route of the API, each secured by the API key", async () => {
  const doc = await (await fetch(base + "/v1/openapi.json")).json();
  const want = [
    "post /v1/events", "get /v1/dead-letters", "get /v1/dead-letters/{id}", "delete /v1/dead-letters/{id}", "post /v1/dead-letters/{id}/retry",
    "get /v1/catalogue", "put /v1/catalogue", "get /v1/catalogue/versions", "put /v1/catalogue/badges/{id}", "delete /v1/catalogue/badges/{id}",
    "put /v1/catalogue/xp/{id}", "delete /v1/catalogue/xp/{id}", "post /v1/catalogue/preview", "get /v1/jobs", "get /v1/jobs/{id}", "delete /v1/jobs/{id}",
    "get /v1/users/{id}", "get /v1/users/{id}/progress", "get /v1/users/{id}/badges/{badge}", "get /v1/users/{id}/events",
    "post /v1/users/{id}/badges/{badge}/revoke", "post /v1/users/{id}/retractions",
  ];
  const have = Object.entries(doc.paths).flatMap(([p, ops]) => Object.keys(ops).map((m) => `${m} ${p}`));
  for (const op of want) assert.ok(have.includes(op), `missing ${op}`);
  for (const op of want) {
    const [m, p] = op.split(" ");
    assert.deepEqual(doc.paths[p][m].security, [{ api_key: [] }], op);
  }
  assert.equal(doc.components.securitySchemes.api_key.scheme, "bearer");
});

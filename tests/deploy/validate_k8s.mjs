// validate_k8s.mjs FILE... : checks every object in the Kubernetes
// manifests against the API schemas of kubernetes-models (required fields,
// types, formats), offline. Prints one line per object; exits 1 if any
// object is invalid, of a kind it does not know, or if a file is not YAML.
// Run by tests/integration/test_deploy_files.py.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import yaml from "js-yaml";

const require = createRequire(import.meta.url);
let failed = 0;

// "apps/v1" + "Deployment" -> kubernetes-models/apps/v1/Deployment
function modelFor(apiVersion, kind) {
  if (typeof apiVersion !== "string" || typeof kind !== "string" || !/^[A-Za-z]+$/.test(kind))
    return null;
  const path = apiVersion.includes("/") ? apiVersion : `v1`;
  try {
    const mod = require(`kubernetes-models/${path}/${kind}`);
    return mod[kind] || null;
  } catch {
    return null;
  }
}

for (const file of process.argv.slice(2)) {
  let docs;
  try {
    docs = yaml.loadAll(readFileSync(file, "utf8"));
  } catch (e) {
    console.log(`${file}: not YAML: ${e.message}`);
    failed++;
    continue;
  }
  for (const obj of docs) {
    if (obj === null || obj === undefined)
      continue;
    const name = `${file}: ${obj.kind} ${obj.metadata && obj.metadata.name}`;
    const Model = modelFor(obj.apiVersion, obj.kind);
    if (!Model) {
      console.log(`${name}: unknown apiVersion/kind ${obj.apiVersion}/${obj.kind}`);
      failed++;
      continue;
    }
    try {
      new Model(obj).validate();
      console.log(`${name}: valid`);
    } catch (e) {
      console.log(`${name}: INVALID: ${e.message}`);
      failed++;
    }
  }
}
process.exit(failed ? 1 : 0);

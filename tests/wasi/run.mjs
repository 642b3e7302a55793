// Runs a wasm32-wasip1 test binary under Node's built-in WASI (no runtime to build):
//   node tests/wasi/run.mjs target/.../tokengate-<hash>.wasm [libtest arguments...]
// The library's test binary also links the proxy-wasm host module, whose imports a unit
// test never calls: each is a stub that fails loudly if one ever is.
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';
import { argv, exit } from 'node:process';

const [wasmPath, ...args] = argv.slice(2);
if (!wasmPath) {
  console.error('usage: node tests/wasi/run.mjs TEST.wasm [libtest arguments...]');
  exit(2);
}
const wasi = new WASI({
  version: 'preview1',
  args: ['tokengate-tests', ...args],
  env: {},
  preopens: {},
  returnOnExit: true,
});
const module = await WebAssembly.compile(await readFile(wasmPath));
const imports = wasi.getImportObject();
for (const { module: name, name: field, kind } of WebAssembly.Module.imports(module)) {
  if (name === 'wasi_snapshot_preview1') continue;
  if (kind !== 'function') throw new Error(`unexpected import ${name}.${field} (${kind})`);
  imports[name] ??= {};
  imports[name][field] = () => {
    throw new Error(`host call ${name}.${field} in a unit test`);
  };
}
const instance = await WebAssembly.instantiate(module, imports);
exit(wasi.start(instance));

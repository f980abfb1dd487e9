// The writ GitHub Action's launcher: find the writ-action binary and run it.
//
// All of the action's logic lives in the Rust binary; this file only gets
// the binary onto the runner without any unverified download, in order:
//   1. WRIT_ACTION_BIN, when it names an executable file (self-hosted runners
//      with writ-action preinstalled; tests);
//   2. the release asset for this runner's OS and architecture, downloaded
//      from the release named in action/checksums.txt (on $GITHUB_SERVER_URL)
//      and checked against the SHA-256 sum committed there (a mismatch stops
//      the job; an asset without a committed sum is never downloaded);
//   3. a build from source: `cargo build --release -p writ-action` in the
//      action's directory.
// Then it runs `writ-action main` or `writ-action post` with the same
// environment and stdio, and exits with its status.
//
// Dependency-free on purpose (Node's standard library only), and written for
// every Node version GitHub runs actions with (20, 24).
'use strict';

const childProcess = require('child_process');
const crypto = require('crypto');
const fs = require('fs');
const os = require('os');
const path = require('path');

// The action's root: launcher/ is in action/, which is in the repository root.
const ACTION_ROOT = path.resolve(__dirname, '..', '..');
const CHECKSUMS = path.join(ACTION_ROOT, 'action', 'checksums.txt');
const EXE = process.platform === 'win32' ? '.exe' : '';
const DOWNLOAD_TIMEOUT_MS = 120000;
const MAX_ASSET_BYTES = 64 * 1024 * 1024;

function log(line) {
  process.stdout.write(`writ: ${line}\n`);
}

// A workflow command message: `%`, CR and LF escaped as the runner expects.
function escapeData(text) {
  return String(text).replace(/%/g, '%25').replace(/\r/g, '%0D').replace(/\n/g, '%0A');
}

// Which step this process launches: the post step must never fail the job.
let currentStep = 'main';

function fail(message) {
  if (currentStep === 'post') {
    process.stdout.write(`::warning title=writ could not revoke the token::${escapeData(message)}\n`);
    process.exit(0);
  }
  process.stdout.write(`::error title=writ could not start::${escapeData(message)}\n`);
  process.exit(1);
}

function isExecutableFile(file) {
  try {
    if (!fs.statSync(file).isFile()) {
      return false;
    }
    if (process.platform !== 'win32') {
      fs.accessSync(file, fs.constants.X_OK);
    }
    return true;
  } catch (_) {
    return false;
  }
}

// Release asset name for this runner, e.g. writ-action-linux-x64.
function assetName() {
  const osName = { Linux: 'linux', macOS: 'macos', Windows: 'windows' }[process.env.RUNNER_OS || ''] ||
    { linux: 'linux', darwin: 'macos', win32: 'windows' }[process.platform];
  const arch = { X64: 'x64', ARM64: 'arm64' }[process.env.RUNNER_ARCH || ''] ||
    { x64: 'x64', arm64: 'arm64' }[process.arch];
  if (!osName || !arch) {
    return null;
  }
  return `writ-action-${osName}-${arch}${osName === 'windows' ? '.exe' : ''}`;
}

// action/checksums.txt: `release <tag>` and `<sha256>  <asset>` lines.
function readChecksums() {
  const result = { release: null, repository: null, sums: new Map() };
  let text;
  try {
    text = fs.readFileSync(CHECKSUMS, 'utf8');
  } catch (_) {
    return result;
  }
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) {
      continue;
    }
    const release = /^release\s+(\S+)$/.exec(line);
    const repository = /^repository\s+([\w.-]+\/[\w.-]+)$/.exec(line);
    const sum = /^([0-9a-f]{64})\s+\*?(\S+)$/.exec(line);
    if (release) {
      result.release = release[1];
    } else if (repository) {
      result.repository = repository[1];
    } else if (sum) {
      result.sums.set(sum[2], sum[1]);
    }
  }
  return result;
}

function sha256(file) {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

async function download(url, destination) {
  const response = await fetch(url, { redirect: 'follow', signal: AbortSignal.timeout(DOWNLOAD_TIMEOUT_MS) });
  if (!response.ok) {
    throw new Error(`HTTP ${response.status} for ${url}`);
  }
  const body = Buffer.from(await response.arrayBuffer());
  if (body.length > MAX_ASSET_BYTES) {
    throw new Error(`${url} is larger than ${MAX_ASSET_BYTES} bytes`);
  }
  fs.writeFileSync(destination, body, { mode: 0o755 });
}

// A verified release asset, cached per release in the runner's tool cache
// (or temp dir) so the post step does not download it again. Returns null
// when there is no committed sum or the download fails; exits on a
// checksum mismatch.
async function releaseBinary() {
  const asset = assetName();
  const { release, repository, sums } = readChecksums();
  const want = asset && sums.get(asset);
  const repo = repository || process.env.GITHUB_ACTION_REPOSITORY;
  if (!asset || !release || !want || !repo) {
    log(`no committed checksum for ${asset || `${process.platform}/${process.arch}`}${release ? ` in release ${release}` : ''}; building from source`);
    return null;
  }
  const cacheRoot = process.env.RUNNER_TOOL_CACHE || process.env.RUNNER_TEMP || os.tmpdir();
  const dir = path.join(cacheRoot, 'writ-action', release.replace(/[^\w.-]/g, '_'));
  const target = path.join(dir, asset);
  if (isExecutableFile(target) && sha256(target) === want) {
    return target;
  }
  fs.mkdirSync(dir, { recursive: true });
  const partial = `${target}.${process.pid}.partial`;
  // GITHUB_SERVER_URL: github.com, or the GitHub Enterprise Server the run is on.
  const server = (process.env.GITHUB_SERVER_URL || 'https://github.com').replace(/\/+$/, '');
  const url = `${server}/${repo}/releases/download/${encodeURIComponent(release)}/${asset}`;
  try {
    log(`downloading ${url}`);
    await download(url, partial);
  } catch (error) {
    fs.rmSync(partial, { force: true });
    log(`download failed (${error.message}); building from source`);
    return null;
  }
  const got = sha256(partial);
  if (got !== want) {
    fs.rmSync(partial, { force: true });
    fail(`${asset} from ${url} has SHA-256 ${got}, but action/checksums.txt says ${want}. ` +
      'Refusing to run it: the release asset is not the one this version of the action was published with.');
  }
  fs.renameSync(partial, target);
  return target;
}

function cargoBuild() {
  const cargo = process.platform === 'win32' ? 'cargo.exe' : 'cargo';
  log('building writ-action from source (cargo build --release -p writ-action)');
  const result = childProcess.spawnSync(cargo, ['build', '--release', '--locked', '-p', 'writ-action'], {
    cwd: ACTION_ROOT,
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  if (result.error) {
    fail(`no release binary for this runner and cargo could not run (${result.error.message}). ` +
      'Install Rust (e.g. dtolnay/rust-toolchain) before this step, or set WRIT_ACTION_BIN to a writ-action binary.');
  }
  if (result.status !== 0) {
    fail(`cargo build --release -p writ-action failed with status ${result.status}`);
  }
  const targetDir = process.env.CARGO_TARGET_DIR || path.join(ACTION_ROOT, 'target');
  const built = path.join(targetDir, 'release', `writ-action${EXE}`);
  if (!isExecutableFile(built)) {
    fail(`cargo reported success but ${built} is missing`);
  }
  return built;
}

async function findBinary() {
  const explicit = process.env.WRIT_ACTION_BIN;
  if (explicit) {
    if (isExecutableFile(explicit)) {
      return explicit;
    }
    log(`WRIT_ACTION_BIN=${explicit} is not an executable file; ignoring it`);
  }
  return (await releaseBinary()) || cargoBuild();
}

async function run(step) {
  currentStep = step;
  // Nothing to revoke (the main step got no token): skip finding the binary,
  // which could mean a pointless build from source.
  if (step === 'post' && !process.env.STATE_token) {
    log('no token to revoke (the main step did not obtain one)');
    process.exit(0);
  }
  let binary;
  try {
    binary = await findBinary();
  } catch (error) {
    fail(`could not get the writ-action binary: ${error.message}`);
  }
  const child = childProcess.spawn(binary, [step], { stdio: 'inherit', env: process.env });
  child.on('error', (error) => fail(`could not run ${binary}: ${error.message}`));
  child.on('exit', (code, signal) => {
    if (signal) {
      process.stdout.write(`writ: writ-action ended by signal ${signal}\n`);
      process.exit(1);
    }
    process.exit(code === null ? 1 : code);
  });
}

module.exports = { run, assetName, readChecksums };

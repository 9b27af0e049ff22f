// Starts the real server binary on a free loopback port with a fresh data dir, for the
// end-to-end tests, and stops it again (SIGTERM, then the data dir is removed).
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import net from "node:net";

const root = resolve(import.meta.dirname, "../..");
export const bin = process.env.ACCOLADE_BIN || join(root, "target/debug/accolade");

const freePort = () =>
  new Promise((ok) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });

/// Resolves to { base, stop } once the server answers /readyz (at most 10 s). `args` are more
/// flags for the server (a small `--rate-per-sec`, say).
export async function startServer(args = []) {
  const port = await freePort();
  const dataDir = mkdtempSync(join(tmpdir(), "accolade-e2e-"));
  const server = spawn(bin, ["--bind", `127.0.0.1:${port}`, "--data-dir", dataDir, ...args], { stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, RUST_LOG: "warn" } });
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 100; i++) {
    try {
      if ((await fetch(base + "/readyz")).ok) break;
    } catch {}
    await new Promise((r) => setTimeout(r, 100));
  }
  const stop = async () => {
    server.kill("SIGTERM");
    await new Promise((r) => (server.exitCode !== null ? r() : server.on("exit", r)));
    rmSync(dataDir, { recursive: true, force: true });
  };
  return { base, stop };
}

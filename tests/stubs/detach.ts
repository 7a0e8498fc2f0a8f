// A Poligraph-like script that starts a child the way Puppeteer and Playwright start Chromium:
// spawn(..., {detached: true}) gives it its own session, out of the script's process group.
//   npx tsx detach.ts <pid file> [exit|stay]
// Appends the child's pid and its own to <pid file>, prints "ready", then exits (leaving the
// child behind) or stays until killed.
import { spawn } from "node:child_process";
import { appendFileSync } from "node:fs";

const [pidFile, mode = "exit"] = process.argv.slice(2);
const child = spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)"], {
  detached: true,
  stdio: "ignore",
});
child.unref();
appendFileSync(pidFile, `${child.pid}\n${process.pid}\n`);
console.log("ready");
if (mode === "stay") {
  setInterval(() => {}, 1000);
}

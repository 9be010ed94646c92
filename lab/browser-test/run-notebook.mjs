// cargo lab test's browser test: opens a notebook in JupyterLab in headless Chromium, runs all its
// cells as a student would (Run > Run All Cells), waits for the kernel, then checks what the page
// shows: every image decoded, every SVG plot drawn, no error or panic output, no raw escape codes,
// and the check cells' PASS lines. Saves the notebook once it has run, and a screenshot of the whole
// notebook either way.
//
// usage: node run-notebook.mjs URL SCREENSHOT.png EXPECTED_PASS_LINES CODE_CELLS FIGURE_CELLS [restart]
// FIGURE_CELLS: comma-separated positions (0-based, among the code cells) of the cells that must
// show an image or a plot.
// Prints one JSON line with what it saw; exits 1 with the reasons when something is wrong.

import { chromium } from "playwright-core";

const [url, screenshot, expectedPassArg, codeCellsArg, figureCellsArg, restartArg] = process.argv.slice(2);
// "restart": after Run All, also Kernel > Restart Kernel and Run All Cells, and judge the page after
// that second run (in `cargo lab up` the restart takes the warm spare kernel, on other ports).
const restart = restartArg === "restart";
const expectedPass = Number(expectedPassArg ?? 0);
const codeCells = Number(codeCellsArg ?? 0);
const figureCells = (figureCellsArg ?? "").split(",").filter((s) => s !== "").map(Number);
const RUN_TIMEOUT_MS = 8 * 60 * 1000;
// Without the background-networking flags Chromium keeps dialling Google's hosts, which a closed
// network refuses. Playwright gives it a new, empty profile every time.
const FLAGS = [
  "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--disable-dev-shm-usage",
];

const problems = [];
const seen = {};
let browser;
try {
  browser = await chromium.launch({
    executablePath: process.env.LAB_CHROMIUM ?? "/usr/bin/chromium",
    args: FLAGS,
    headless: true,
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  await page.goto(url, { waitUntil: "domcontentloaded", timeout: 120_000 });
  // The notebook is open and its kernel (named in the notebook's metadata) has started.
  await page.locator(".jp-Notebook .jp-Cell").first().waitFor({ timeout: 120_000 });
  await waitForIdle(page, 180_000);

  const started = Date.now();
  await page.locator(".lm-MenuBar-itemLabel", { hasText: /^Run$/ }).click();
  await page.locator(".lm-Menu-itemLabel", { hasText: /^Run All Cells$/ }).click();
  await waitForAllRun(page);
  await waitForIdle(page, 60_000);
  seen.run_seconds = Math.round((Date.now() - started) / 1000);

  if (restart) {
    // What a student does after changing a cell far up. The page below is judged after this run.
    const again = Date.now();
    await page.locator(".lm-MenuBar-itemLabel", { hasText: /^Kernel$/ }).click();
    await page.locator(".lm-Menu-itemLabel", { hasText: /^Restart Kernel and Run All Cells/ }).click();
    await page.getByRole("button", { name: "Confirm Kernel Restart" }).click();
    // The cells are queued again once the new kernel is there.
    await page.waitForFunction(
      () => [...document.querySelectorAll(".jp-CodeCell .jp-InputPrompt")].some((p) => p.textContent.trim() === "[*]:"),
      null,
      { timeout: 180_000, polling: 200 },
    );
    await waitForAllRun(page);
    await waitForIdle(page, 60_000);
    seen.restart_run_seconds = Math.round((Date.now() - again) / 1000);
  }

  // Saved as a student would (File > Save Notebook): `cargo lab test` reads the file the server
  // wrote and checks its outputs as it checks a notebook run headless.
  const saved = page.waitForResponse(
    (r) => r.url().includes("/api/contents/") && r.request().method() === "PUT",
    { timeout: 60_000 },
  );
  await page.locator(".lm-MenuBar-itemLabel", { hasText: /^File$/ }).click();
  await page.locator(".lm-Menu-itemLabel", { hasText: /^Save Notebook$/ }).click();
  const answer = await saved;
  seen.saved = answer.ok();
  if (!answer.ok()) problems.push(`saving the notebook failed: HTTP ${answer.status()}`);

  // JupyterLab renders cells lazily: bring each output into view before judging it.
  const outputs = page.locator(".jp-OutputArea-output");
  const count = await outputs.count();
  for (let i = 0; i < count; i++) {
    await outputs.nth(i).scrollIntoViewIfNeeded();
  }
  Object.assign(seen, await page.evaluate(async () => {
    const images = [...document.querySelectorAll(".jp-OutputArea-output img")];
    const decoded = await Promise.all(images.map((img) => img.decode().then(() => true, () => false)));
    // A truncated PNG still has its size (naturalWidth > 0) and draws its first rows; the rest
    // stays transparent. The lab's images are opaque, so any transparent pixel means a broken one.
    const transparent = (img) => {
      const canvas = document.createElement("canvas");
      [canvas.width, canvas.height] = [img.naturalWidth, img.naturalHeight];
      if (!canvas.width || !canvas.height) return -1;
      const ctx = canvas.getContext("2d");
      ctx.drawImage(img, 0, 0);
      const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
      let n = 0;
      for (let i = 3; i < data.length; i += 4) if (data[i] === 0) n++;
      return n;
    };
    const isSvg = (img) => img.src.startsWith("data:image/svg+xml");
    const svgText = (img) => {
      const data = img.src.slice(img.src.indexOf(",") + 1);
      return img.src.includes(";base64,") ? atob(data) : decodeURIComponent(data);
    };
    const inlineSvgs = [...document.querySelectorAll(".jp-OutputArea-output svg")].filter((s) => !s.closest(".jp-OutputPrompt"));
    // Per code cell: does its output area hold a picture (an image, or an SVG outside the prompt)?
    const cells = [...document.querySelectorAll(".jp-Notebook .jp-CodeCell")].map((cell) => ({
      source: (cell.querySelector(".jp-InputArea-editor")?.textContent ?? "").slice(0, 60),
      picture: [...cell.querySelectorAll(".jp-OutputArea-output img, .jp-OutputArea-output svg")].some((e) => !e.closest(".jp-OutputPrompt")),
    }));
    // textContent, not innerText: off-screen cells are not laid out, and innerText needs layout.
    const texts = [...document.querySelectorAll(".jp-OutputArea-output")].map((o) => o.textContent);
    return {
      cells,
      png_images: images.map((img, k) => ({ img, k })).filter(({ img }) => !isSvg(img))
        .map(({ img, k }) => ({ w: img.naturalWidth, h: img.naturalHeight, decoded: decoded[k], transparent_px: transparent(img) })),
      svg_images: images.filter(isSvg).map((i) => ({ w: i.naturalWidth, h: i.naturalHeight, drawn: /<(path|polyline|rect|line|text)\b/.test(svgText(i)) })),
      inline_svgs: inlineSvgs.map((s) => ({ children: s.querySelectorAll("*").length, w: s.getBoundingClientRect().width })),
      error_outputs: [...document.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')].map((o) => o.textContent.slice(0, 300)),
      stderr_outputs: [...document.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')].map((o) => o.textContent.slice(0, 300)),
      pass_lines: texts.join("\n").split("\n").filter((l) => /\bPASS\b/.test(l)).length,
      // A figure as Debug text ("LinePlot { title: ...") means evcxr could not display it.
      bad_lines: texts.join("\n").split("\n")
        .filter((l) => /panicked at|error\[E|\bFAIL\b|NOT DONE|^\s*(LinePlot|BarChart|ImageGrid|Figure|Stack|Challenge) \{/.test(l)).slice(0, 10),
      escape_codes: texts.filter((t) => /\u001b\[|\[\d+(;\d+)*m/.test(t)).length,
      tallest_output_px: Math.max(0, ...[...document.querySelectorAll(".jp-OutputArea-output")].map((o) => o.getBoundingClientRect().height)),
    };
  }));

  if (seen.cells.length !== codeCells) problems.push(`the page shows ${seen.cells.length} code cells, the notebook has ${codeCells}`);
  figureCells.forEach((k) => {
    const cell = seen.cells[k];
    if (cell && !cell.picture) problems.push(`code cell ${k + 1} (${JSON.stringify(cell.source)}...) shows no image or plot`);
  });
  seen.cells = seen.cells.length;
  if (seen.png_images.length === 0) problems.push("no PNG image output at all");
  seen.png_images.forEach((i, n) => {
    if (!(i.w > 0)) problems.push(`PNG image ${n + 1} did not render (naturalWidth 0)`);
    else if (!i.decoded || i.transparent_px !== 0) problems.push(`PNG image ${n + 1} is broken: decoded ${i.decoded}, ${i.transparent_px} transparent pixels`);
  });
  const svgs = seen.svg_images.length + seen.inline_svgs.length;
  if (svgs === 0) problems.push("no SVG plot at all");
  seen.svg_images.forEach((i, n) => { if (!(i.w > 0 && i.drawn)) problems.push(`SVG plot ${n + 1} is empty or did not render (${JSON.stringify(i)})`); });
  seen.inline_svgs.forEach((s, n) => { if (!(s.children > 0 && s.w > 0)) problems.push(`inline SVG ${n + 1} has no content`); });
  seen.error_outputs.forEach((e) => problems.push(`error output: ${e}`));
  seen.stderr_outputs.forEach((e) => problems.push(`stderr output: ${e}`));
  seen.bad_lines.forEach((l) => problems.push(`bad text in an output: ${l}`));
  if (seen.escape_codes > 0) problems.push(`${seen.escape_codes} output(s) show raw terminal escape codes`);
  if (seen.pass_lines < expectedPass) problems.push(`${seen.pass_lines} PASS line(s), expected at least ${expectedPass}`);
  if (seen.tallest_output_px > 4000) problems.push(`an output is ${seen.tallest_output_px} px tall: a giant output`);

  // The whole notebook in one picture: a viewport as tall as the notebook (Chromium's limit is
  // about 16k px), scrolled to the top.
  const height = await page.evaluate(() => {
    const scrollers = [...document.querySelectorAll(".jp-NotebookPanel .jp-WindowedPanel-outer, .jp-NotebookPanel-notebook")];
    scrollers.forEach((s) => s.scrollTo(0, 0));
    return Math.max(0, ...scrollers.map((s) => s.scrollHeight)) + 200;
  });
  await page.setViewportSize({ width: 1280, height: Math.min(Math.max(height, 1000), 16000) });
  await page.waitForTimeout(1500);
  await page.screenshot({ path: screenshot, fullPage: true });
  seen.screenshot = screenshot;
} catch (e) {
  problems.push(`browser test stopped: ${e.message.split("\n")[0]}`);
  for (const p of browser?.contexts().flatMap((c) => c.pages()) ?? []) {
    // Which prompts kept the wait from ending (a cell still running, or never run).
    const prompts = await p
      .evaluate(() => [...document.querySelectorAll(".jp-CodeCell .jp-InputPrompt")].map((e, i) => `${i}:${JSON.stringify(e.textContent.trim())}`))
      .catch(() => []);
    const odd = prompts.filter((t) => !/^\d+:"\[\d+\]:"$/.test(t));
    if (odd.length > 0) problems.push(`prompts not finished: ${odd.slice(0, 10).join(", ")} (of ${prompts.length})`);
    await p.screenshot({ path: screenshot, fullPage: true }).catch(() => undefined);
  }
} finally {
  await browser?.close();
}

console.log(JSON.stringify({ ...seen, problems }));
process.exit(problems.length === 0 ? 0 : 1);

async function waitForAllRun(page) {
  // Run All queues every cell: wait until no prompt shows [*] and every one has its number.
  await page.waitForFunction(
    () => {
      const prompts = [...document.querySelectorAll(".jp-CodeCell .jp-InputPrompt")].map((p) => p.textContent.trim());
      return prompts.length > 0 && prompts.every((p) => /^\[\d+\]:$/.test(p));
    },
    null,
    { timeout: RUN_TIMEOUT_MS, polling: 1000 },
  );
}

async function waitForIdle(page, timeout) {
  // The status bar's kernel item reads "Rust (lab) | Idle" once the kernel has started and is
  // done. (The toolbar's indicator says idle earlier, while the kernel still initialises, and a
  // Run All sent then is lost.)
  await page.waitForFunction(
    () => [...document.querySelectorAll(".jp-StatusBar-TextItem")].some((e) => /\S \| Idle$/.test(e.textContent.trim())),
    null,
    { timeout, polling: 500 },
  );
}

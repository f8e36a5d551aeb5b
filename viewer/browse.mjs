// Drives Debian's Chromium through OHIF for viewer/check.py: the study list, then one
// viewer page per study. Prints progress on stderr and writes one JSON report (every
// request the page made to the DICOMweb server, console errors, what was seen) to the
// path given in the job. Never downloads a browser: playwright-core only drives the one
// at job.chromium.
import { writeFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const job = JSON.parse(process.argv[2]);
const log = (...args) => console.error('[browser]', ...args);
const report = { requests: [], consoleErrors: [], list: null, studies: [] };
const started = Date.now();

function save() {
  writeFileSync(job.report, JSON.stringify(report, null, 1));
}

// A drawn image: a canvas of the viewport (cornerstone copies each WebGL render into a
// 2D canvas, and the CPU fallback draws there directly) with enough non-black pixels
// and enough distinct grey levels that it is not a blank, a flat fill or a spinner.
async function imageDrawn(page) {
  return page.evaluate(() => {
    let best = { canvases: 0, lit: 0, levels: 0, width: 0, height: 0 };
    const canvases = document.querySelectorAll('.cornerstone-canvas, [data-viewport-uid] canvas');
    for (const canvas of canvases) {
      if (!canvas.width || !canvas.height) continue;
      best.canvases += 1;
      let ctx;
      try {
        ctx = canvas.getContext('2d', { willReadFrequently: true });
      } catch {
        continue;
      }
      if (!ctx) continue;
      const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
      let lit = 0;
      const levels = new Set();
      for (let i = 0; i < data.length; i += 4 * 7) {
        const grey = (data[i] + data[i + 1] + data[i + 2]) / 3;
        if (grey > 16) lit += 1;
        levels.add(grey >> 2);
      }
      const share = lit / (data.length / (4 * 7));
      if (share > best.lit) best = { ...best, lit: share, levels: levels.size, width: canvas.width, height: canvas.height };
    }
    return best;
  });
}

async function pollUntil(what, timeoutMs, probe) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await probe();
    if (last.ok) return last;
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error(`${what} not seen within ${timeoutMs / 1000} s (last probe: ${JSON.stringify(last)})`);
}

const pending = new Set();
async function settle(page, quietMs = 1500, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  let quietSince = Date.now();
  while (Date.now() < deadline) {
    if (pending.size) quietSince = Date.now();
    else if (Date.now() - quietSince >= quietMs) return;
    await page.waitForTimeout(200);
  }
}

const browser = await chromium.launch({
  executablePath: job.chromium,
  headless: true,
  // root in a container: no sandbox. SwiftShader gives WebGL without a GPU.
  args: [
    '--no-sandbox', '--enable-unsafe-swiftshader', '--use-angle=swiftshader', '--ignore-gpu-blocklist',
    ...(job.disableWebSecurity ? ['--disable-web-security'] : []),
  ],
});
let exitCode = 0;
try {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 }, serviceWorkers: 'block' });
  // As for a returning user: the onboarding tour would cover the viewport in the screenshot.
  await context.addInitScript(() => localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])));
  // The bearer token a signed-in user's OHIF would send (OHIF gets it from its OIDC login;
  // here the check adds it to every request to our server).
  if (job.token) {
    await context.route((url) => url.href.startsWith(job.server), (route) =>
      route.continue({ headers: { ...route.request().headers(), authorization: `Bearer ${job.token}` } }));
  }
  const page = await context.newPage();

  context.on('request', (request) => {
    if (!request.url().startsWith(job.server)) return;
    const entry = {
      at: Date.now() - started,
      page: job.phase,
      method: request.method(),
      url: request.url(),
      accept: request.headers().accept ?? null,
      status: null,
      contentType: null,
      failure: null,
      ms: null,
    };
    pending.add(request);
    report.requests.push(entry);
    request._entry = entry;
    // headers() leaves out some that the network stack adds; allHeaders() has them all.
    request.allHeaders().then((all) => { entry.accept = all.accept ?? entry.accept; }, () => {});
  });
  const finish = (request, failure) => {
    pending.delete(request);
    const entry = request._entry;
    if (!entry) return;
    entry.failure = failure;
    const timing = request.timing();
    if (timing.responseEnd > 0) entry.ms = Math.round(timing.responseEnd);
  };
  context.on('response', async (response) => {
    const entry = response.request()._entry;
    if (!entry) return;
    entry.status = response.status();
    entry.contentType = response.headers()['content-type'] ?? null;
    if (entry.contentType?.startsWith('multipart/related')) {
      // The first part's own headers say what was really sent (transfer syntax, media type).
      const head = await response.body().then((b) => b.subarray(0, 2000).toString('latin1'), () => '');
      const start = head.indexOf('\r\n') + 2;
      const end = head.indexOf('\r\n\r\n', start);
      if (start > 1 && end > start) entry.partHeaders = head.slice(start, end).split('\r\n');
    }
  });
  context.on('requestfinished', (request) => finish(request, null));
  context.on('requestfailed', (request) => finish(request, request.failure()?.errorText ?? 'failed'));
  page.on('console', (message) => {
    if (message.type() === 'error') report.consoleErrors.push({ page: job.phase, text: message.text().slice(0, 500) });
  });
  page.on('pageerror', (error) => report.consoleErrors.push({ page: job.phase, text: `pageerror: ${String(error).slice(0, 500)}` }));

  // 1. The study list shows every stored study by patient name.
  job.phase = 'study list';
  log(`study list: ${job.ohif}/`);
  await page.goto(`${job.ohif}/`, { waitUntil: 'domcontentloaded' });
  const t0 = Date.now();
  for (const study of job.studies) {
    await page.getByText(study.listText, { exact: false }).first().waitFor({ timeout: job.timeoutMs });
  }
  await settle(page);
  report.list = { ok: true, seconds: (Date.now() - t0) / 1000 };
  await page.screenshot({ path: job.listScreenshot });
  log(`study list shows ${job.studies.map((s) => s.listText).join(', ')}`);

  // 2. Each study opens in the viewer with its image drawn.
  for (const study of job.studies) {
    job.phase = `viewer ${study.label}`;
    const url = `${job.ohif}/viewer?StudyInstanceUIDs=${study.uid}`;
    log(`viewer: ${url}`);
    const t1 = Date.now();
    const result = { label: study.label, uid: study.uid, required: study.required, ok: false, error: null, seconds: null, probe: null, screenshot: study.screenshot };
    report.studies.push(result);
    try {
      await page.goto(url, { waitUntil: 'domcontentloaded' });
      result.probe = await pollUntil(`an image of ${study.label} drawn`, job.timeoutMs, async () => {
        const seen = await imageDrawn(page);
        return { ...seen, ok: seen.lit > 0.05 && seen.levels >= 8 };
      });
      result.seconds = (Date.now() - t1) / 1000;
      await settle(page);
      result.ok = true;
      log(`${study.label}: image drawn after ${result.seconds} s`);
    } catch (error) {
      result.error = String(error.message ?? error).split('\n')[0];
      log(`${study.label}: FAILED: ${result.error}`);
    }
    await page.screenshot({ path: study.screenshot }).catch((e) => log(`screenshot failed: ${e}`));
  }
} catch (error) {
  report.fatal = String(error.message ?? error).split('\n')[0];
  log(`FAILED: ${report.fatal}`);
  exitCode = 1;
} finally {
  save();
  await browser.close().catch(() => {});
}
process.exit(exitCode);

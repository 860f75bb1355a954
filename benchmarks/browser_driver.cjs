// Drives the page (shrinkformer web-demo) in headless Chromium: waits for the model, types a
// sentence and reads its translation, then translates the lines given (set into the text box,
// one click), reads the page's own timing and saves a screenshot.
//   node browser_driver.cjs URL SOURCES.txt SCREENSHOT.png   (NODE_PATH: where puppeteer-core is)
// prints one JSON object: load_seconds, typed {source, target}, lines, seconds, words, sentences
const fs = require("fs");
const puppeteer = require("puppeteer-core");

(async () => {
  const [url, sourcesPath, screenshot] = process.argv.slice(2);
  const sources = fs.readFileSync(sourcesPath, "utf-8").replace(/\n$/, "").split("\n");
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.setViewport({ width: 1100, height: 700 });
    await page.goto(url, { waitUntil: "load" });
    await page.waitForFunction(() => document.getElementById("model").dataset.state === "ready" ||
      document.getElementById("error").textContent, { timeout: 60000 });
    const error = await page.$eval("#error", (e) => e.textContent);
    if (error) throw new Error(`the page says: ${error}`);
    const loadSeconds = await page.evaluate(() => window.shrinkformer.loadSeconds);
    // a sentence typed as a user types it
    await page.$eval("#source", (e) => { e.value = ""; });
    await page.type("#source", sources[0]);
    await page.click("#translate");
    await page.waitForSelector("#target[data-state=done]", { timeout: 60000 });
    const typed = { source: sources[0], target: await page.$eval("#target", (e) => e.textContent) };
    // the batch: every line at once
    await page.$eval("#source", (e, text) => { e.value = text; }, sources.join("\n"));
    await page.click("#translate");
    await page.waitForSelector("#target[data-state=done]", { timeout: 600000 });
    const run = await page.evaluate(() => window.shrinkformer.lastRun);
    await page.$eval("#source", (e, text) => { e.value = text; }, sources.slice(0, 6).join("\n"));
    await page.$eval("#target", (e, text) => { e.textContent = text; }, run.lines.slice(0, 6).join("\n"));
    await page.screenshot({ path: screenshot });
    console.log(JSON.stringify({ load_seconds: loadSeconds, typed, ...run, page_errors: errors }));
  } finally {
    await browser.close();
  }
})().catch((err) => { console.error(`driver: ${err.message}`); process.exit(1); });

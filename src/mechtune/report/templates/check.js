// The page checks itself once everything has loaded: every figure decoded and every
// table has rows. The outcome goes on <body data-render>, and each failure is logged to
// the console and shown at the top; the browser test reads both.
window.addEventListener("load", function () {
  var failures = [];
  var figures = document.querySelectorAll("img[data-check=figure]");
  figures.forEach(function (img) {
    if (!img.complete || img.naturalWidth === 0) {
      failures.push("figure did not load: " + img.alt);
    }
  });
  var tables = document.querySelectorAll("table[data-check=table]");
  tables.forEach(function (t, i) {
    if (t.tBodies.length === 0 || t.tBodies[0].rows.length === 0) {
      failures.push("table " + (i + 1) + " has no rows");
    }
  });
  failures.forEach(function (f) { console.error("mechtune report: " + f); });
  document.body.dataset.figures = String(figures.length);
  document.body.dataset.tables = String(tables.length);
  document.body.dataset.failures = String(failures.length);
  document.body.dataset.render = failures.length ? "failed" : "ok";
  if (failures.length) {
    var box = document.getElementById("render-status");
    box.textContent = failures.join("; ");
    box.hidden = false;
  }
});

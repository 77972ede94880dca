// The page of `cxr serve`: upload X-rays, see the ranked findings and Grad-CAM heatmaps.
// Plain JavaScript with no dependencies; it talks only to this server (relative URLs, so
// it works behind a reverse proxy under a sub-path). Research use only.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const state = {
    model: null,
    key: sessionStorage.getItem("cxr-api-key") || "",
    items: [],
    selected: null,
    nextId: 1,
  };

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, options = {}) {
    const headers = state.key ? { Authorization: "Bearer " + state.key } : {};
    const res = await fetch(path, { ...options, headers, cache: "no-store" });
    if (res.ok) return res;
    let detail = res.statusText || "request failed";
    try {
      const body = await res.json();
      if (body && typeof body.detail === "string") detail = body.detail;
    } catch (_) {
      /* not JSON */
    }
    if (res.status === 401) showKeyForm();
    throw new ApiError(res.status, detail);
  }

  function fmt(p) {
    return p === null || p === undefined ? "—" : Number(p).toFixed(3);
  }

  // a file name for downloads: letters, digits, ".", "_" and "-"
  function safeName(name) {
    return name.replace(/[^A-Za-z0-9._-]+/g, "_").replace(/^[._]+/, "") || "image";
  }

  function saveBlob(blob, filename) {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = filename;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }

  // the SR's URL relative to the page (the API answers it from the server's root; the page
  // may be served under a sub-path)
  function srHref(url) {
    const at = url.indexOf("v1/results/");
    return at >= 0 ? url.slice(at) : url;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // the model ---------------------------------------------------------------------------
  async function loadModel() {
    try {
      const info = await (await api("v1/model")).json();
      state.model = info;
      const backend = info.backend && info.backend.backend ? info.backend.backend : "?";
      const text =
        `${info.backbone} · ${info.input_size} px · ${info.labels.length} labels · ` +
        `${backend} backend · model ${info.file.name} (sha256 ${info.file.sha256.slice(0, 12)}…)`;
      $("model-summary").textContent = text;
      $("footer-model").textContent = `cxr ${info.versions.cxr}`;
      document.querySelector(".banner .notice-text").textContent = info.notice.replace(
        /^Research use only:\s*/,
        "",
      );
      $("footer-notice").textContent = info.notice;
      if (!info.explanations.available) {
        $("label-select").disabled = true;
        $("method-select").disabled = true;
        $("opacity").disabled = true;
      }
      hideKeyForm();
      state.items.filter((it) => it.status === "error" && it.httpStatus === 401).forEach(analyse);
    } catch (err) {
      $("model-summary").textContent =
        err.status === 401 ? "enter the API key to use this service" : `model unavailable: ${err.message}`;
    }
  }

  function showKeyForm() {
    $("key-form").hidden = false;
    $("key-error").textContent = state.key ? "that key was refused" : "";
  }

  function hideKeyForm() {
    $("key-form").hidden = true;
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("api-key").value.trim();
    sessionStorage.setItem("cxr-api-key", state.key);
    loadModel();
  });

  // files -------------------------------------------------------------------------------
  function addFiles(files) {
    const added = [];
    for (const file of files) {
      const item = {
        id: state.nextId++,
        file,
        name: file.name || "image",
        status: "queued",
        result: null,
        image: null,
        preview: null,
        label: null,
        error: "",
        httpStatus: 0,
        explanations: new Map(),
      };
      state.items.push(item);
      added.push(item);
    }
    if (added.length && state.selected === null) select(added[0].id);
    renderList();
    added.forEach(analyse);
  }

  async function analyse(item) {
    item.status = "analysing";
    item.error = "";
    renderList();
    if (state.selected === item.id) renderDetail();
    const previewForm = new FormData();
    previewForm.append("file", item.file, item.name);
    const predictForm = new FormData();
    predictForm.append("files", item.file, item.name);
    const [preview, predicted] = await Promise.allSettled([
      api("v1/preview", { method: "POST", body: previewForm }).then((r) => r.blob()),
      api("v1/predict", { method: "POST", body: predictForm }).then((r) => r.json()),
    ]);
    if (preview.status === "fulfilled") {
      if (item.preview) URL.revokeObjectURL(item.preview);
      item.preview = URL.createObjectURL(preview.value);
    }
    if (predicted.status === "fulfilled") {
      item.result = predicted.value;
      item.image = item.result.images[0] || null;
      if (item.image) {
        item.status = "done";
        item.label = item.image.top_finding.label;
      } else {
        item.status = "error";
        const skipped = item.result.skipped[0];
        item.error = skipped ? `${skipped.reason}: ${skipped.detail}` : "no result";
      }
    } else {
      item.status = "error";
      item.error = predicted.reason.message;
      item.httpStatus = predicted.reason.status || 0;
    }
    renderList();
    if (state.selected === item.id) {
      renderDetail();
      explainSelected();
    }
  }

  function select(id) {
    state.selected = id;
    renderList();
    renderDetail();
    explainSelected();
  }

  function current() {
    return state.items.find((it) => it.id === state.selected) || null;
  }

  // rendering ---------------------------------------------------------------------------
  function renderList() {
    const list = $("file-list");
    list.replaceChildren();
    for (const item of state.items) {
      const li = el("li", "file-item" + (item.id === state.selected ? " selected" : ""));
      li.tabIndex = 0;
      li.dataset.status = item.status;
      const thumb = el("div", "thumb");
      if (item.preview) {
        const img = el("img");
        img.src = item.preview;
        img.alt = "";
        thumb.append(img);
      }
      const text = el("div", "file-text");
      text.append(el("span", "file-name ellipsis", item.name));
      let sub = "";
      if (item.status === "done") {
        sub = item.image.headline;
      } else if (item.status === "error") {
        sub = item.error;
      } else {
        sub = item.status + "…";
      }
      const subline = el("span", "file-sub ellipsis " + item.status, sub);
      subline.title = sub;
      text.append(subline);
      if (item.status === "done" && item.image.ood && item.image.ood.flag) {
        text.append(el("span", "file-sub warn-text", "may not be a chest X-ray"));
      }
      li.append(thumb, text);
      li.addEventListener("click", () => select(item.id));
      li.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          select(item.id);
        }
      });
      list.append(li);
    }
  }

  function renderDetail() {
    const item = current();
    $("empty").hidden = item !== null;
    $("detail").hidden = item === null;
    if (!item) return;
    $("image-name").textContent = item.name;
    $("image-name").title = item.name;
    const status = $("image-status");
    status.textContent = item.status === "done" ? "analysed" : item.status;
    status.className = "pill " + item.status;
    const base = $("base-image");
    if (item.preview) base.src = item.preview;
    else base.removeAttribute("src");
    base.hidden = !item.preview;
    $("heat-image").hidden = true;
    $("heat-note").textContent = "";
    $("stage-message").textContent =
      item.status === "error" ? item.error : item.preview ? "" : "loading…";
    renderResult(item);
  }

  function renderResult(item) {
    const table = $("results-table");
    const body = table.querySelector("tbody");
    body.replaceChildren();
    const image = item.image;
    $("download-json").disabled = !item.result;
    renderSrLink(item);
    $("ood-warning").hidden = true;
    $("ood-status").textContent = "";
    const notice = document.querySelector(".result-notice");
    if (!image) {
      table.hidden = true;
      $("headline").textContent = item.status === "error" ? `Not analysed: ${item.error}` : "Analysing…";
      $("headline").className = "headline" + (item.status === "error" ? " error-text" : "");
      notice.textContent = state.model ? state.model.notice : "";
      fillLabels(null);
      return;
    }
    $("headline").textContent = image.headline;
    $("headline").className = "headline";
    notice.textContent = image.notice;
    const ood = image.ood || { available: false };
    if (ood.available && ood.flag) {
      $("ood-warning").hidden = false;
      $("ood-text").textContent =
        `Score ${fmt(ood.score)}: the image does not look like the chest radiographs the ` +
        "model was trained on; its findings are meaningless for other images.";
    } else {
      $("ood-status").textContent = ood.available
        ? `Not-a-chest-X-ray check passed (score ${fmt(ood.score)}).`
        : "Not-a-chest-X-ray check: not available for this model.";
    }
    for (const row of image.ranked) {
      const tr = el("tr", row.above_threshold ? "above" : "");
      tr.dataset.label = row.label;
      if (row.label === item.label) tr.classList.add("active");
      tr.append(el("td", "num rank", String(row.rank)));
      const name = el("td", "label");
      name.append(el("span", "", row.label));
      if (row.above_threshold) {
        const badge = el("span", "badge", "above");
        badge.title = "at or above the model's threshold";
        name.append(badge);
      }
      tr.append(name);
      const barCell = el("td", "bar-col");
      const bar = el("div", "bar");
      const fill = el("span", "fill");
      fill.style.width = `${Math.max(0, Math.min(1, row.probability)) * 100}%`;
      bar.append(fill);
      if (row.threshold !== null) {
        const tick = el("span", "tick");
        tick.style.left = `${row.threshold * 100}%`;
        tick.title = `threshold ${fmt(row.threshold)}`;
        bar.append(tick);
      }
      barCell.append(bar);
      tr.append(barCell, el("td", "num", fmt(row.probability)), el("td", "num muted", fmt(row.threshold)));
      tr.addEventListener("click", () => {
        item.label = row.label;
        renderResult(item);
        explainSelected();
      });
      body.append(tr);
    }
    table.hidden = false;
    fillLabels(image);
  }

  // the DICOM SR of a DICOM upload: a link next to the headline (none for PNG and JPEG)
  function renderSrLink(item) {
    const link = $("download-sr");
    const url = item.image && item.image.sr ? srHref(item.image.sr) : null;
    $("sr-note").textContent = "";
    link.hidden = !url;
    if (url) {
      link.href = url;
      link.download = safeName(item.name).replace(/\.(dcm|dicom)$/i, "") + "_sr.dcm";
    } else {
      link.removeAttribute("href");
      link.removeAttribute("download");
    }
  }

  function fillLabels(image) {
    const selectEl = $("label-select");
    selectEl.replaceChildren();
    if (!image) return;
    for (const row of image.ranked) {
      const option = el("option", "", `${row.label} (${fmt(row.probability)})`);
      option.value = row.label;
      selectEl.append(option);
    }
    const item = current();
    if (item && item.label) selectEl.value = item.label;
  }

  // explanations ------------------------------------------------------------------------
  async function explainSelected() {
    const item = current();
    if (!item || item.status !== "done" || !item.label) return;
    if (state.model && !state.model.explanations.available) {
      $("heat-note").textContent = state.model.explanations.detail;
      return;
    }
    const method = $("method-select").value;
    const key = `${item.label}|${method}`;
    let result = item.explanations.get(key);
    if (!result) {
      $("stage").classList.add("busy");
      $("heat-note").textContent = `computing the ${method === "gradcam" ? "Grad-CAM" : "Grad-CAM++"} heatmap of ${item.label}…`;
      const form = new FormData();
      form.append("file", item.file, item.name);
      form.append("labels", item.label);
      form.append("method", method);
      try {
        result = await (await api("v1/explain", { method: "POST", body: form })).json();
        item.explanations.set(key, result);
      } catch (err) {
        if (current() === item) $("heat-note").textContent = `No heatmap: ${err.message}`;
        $("stage").classList.remove("busy");
        return;
      } finally {
        $("stage").classList.remove("busy");
      }
    }
    if (current() !== item || item.label !== result.explanations[0].label) return;
    if ($("method-select").value !== method) return;
    const ex = result.explanations[0];
    const base = $("base-image");
    base.src = "data:image/png;base64," + result.image_png;
    base.hidden = false;
    const heat = $("heat-image");
    heat.src = "data:image/png;base64," + ex.heatmap_png;
    heat.dataset.label = ex.label;
    heat.hidden = false;
    applyOpacity();
    const name = result.method === "gradcam++" ? "Grad-CAM++" : "Grad-CAM";
    $("heat-note").textContent =
      `${name} of ${ex.label} (p = ${fmt(ex.probability)}): warm colours show what raised this ` +
      "finding's score; they are not a localisation of disease." + (ex.note ? ` Note: ${ex.note}.` : "");
    $("stage-message").textContent = "";
  }

  function applyOpacity() {
    const value = Number($("opacity").value);
    $("heat-image").style.opacity = String(value / 100);
    $("opacity-value").textContent = `${value}%`;
  }

  // wiring ------------------------------------------------------------------------------
  $("file-input").addEventListener("change", (event) => {
    addFiles(event.target.files);
    event.target.value = "";
  });
  const zone = $("dropzone");
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      $("file-input").click();
    }
  });
  ["dragenter", "dragover"].forEach((type) =>
    zone.addEventListener(type, (e) => {
      e.preventDefault();
      zone.classList.add("dragging");
    }),
  );
  ["dragleave", "drop"].forEach((type) =>
    zone.addEventListener(type, () => zone.classList.remove("dragging")),
  );
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer && e.dataTransfer.files.length) addFiles(e.dataTransfer.files);
  });
  // a file dropped beside the zone must not make the browser navigate away
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());

  $("label-select").addEventListener("change", (e) => {
    const item = current();
    if (!item) return;
    item.label = e.target.value;
    renderResult(item);
    explainSelected();
  });
  $("method-select").addEventListener("change", explainSelected);
  $("opacity").addEventListener("input", applyOpacity);
  $("download-json").addEventListener("click", () => {
    const item = current();
    if (!item || !item.result) return;
    const blob = new Blob([JSON.stringify(item.result, null, 2) + "\n"], { type: "application/json" });
    saveBlob(blob, safeName(item.name) + ".cxr.json");
  });
  // fetched here rather than followed: the request carries the API key, and an expired SR
  // says so on the page instead of saving an error as a .dcm file
  $("download-sr").addEventListener("click", async (event) => {
    event.preventDefault();
    const link = event.currentTarget;
    const href = link.getAttribute("href");
    if (!href) return;
    $("sr-note").textContent = "";
    try {
      saveBlob(await (await api(href)).blob(), link.download || "result_sr.dcm");
    } catch (err) {
      $("sr-note").textContent = `No DICOM SR: ${err.message}`;
    }
  });

  applyOpacity();
  loadModel();
})();

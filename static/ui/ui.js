// ocellus web UI: the one script. Everything but uploads works without it; with it, uploads
// stream the chosen file to the server with a progress bar, and changing statuses update
// themselves. No dependencies, no build step; loaded as a module under a strict CSP.

const $ = (selector, root = document) => root.querySelector(selector);

function humanSize(bytes) {
  const units = ["KiB", "MiB", "GiB", "TiB"];
  if (bytes < 1024) return `${bytes} B`;
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit + 1 < units.length) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}

// Progressive parts: shown only when this script runs.
function reveal() {
  for (const element of document.querySelectorAll(".js-only")) element.hidden = false;
  for (const element of document.querySelectorAll(".no-js")) element.hidden = true;
}

// Statuses that are still moving (queued, saving, importing) are polled until they settle.
const LIVE = new Set(["queued", "saving", "uploading", "importing"]);
function poll() {
  const started = Date.now();
  for (const element of document.querySelectorAll("[data-poll]")) {
    const url = element.dataset.poll;
    const tick = async () => {
      if (Date.now() - started > 30 * 60 * 1000) return;
      if (document.visibilityState === "visible") {
        try {
          const response = await fetch(url, { headers: { Accept: "application/json" } });
          if (response.ok) {
            const body = await response.json();
            if (element.textContent !== body.status) element.textContent = body.status;
            if (!LIVE.has(body.status)) return;
          }
        } catch {
          // A failed poll is tried again at the next tick.
        }
      }
      setTimeout(tick, 2000);
    };
    setTimeout(tick, 2000);
  }
}

// A copy button beside each command.
function copyButtons() {
  if (!navigator.clipboard) return;
  for (const block of document.querySelectorAll("pre.command")) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "small copy";
    button.textContent = "Copy";
    button.setAttribute("aria-label", "Copy this command");
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(block.textContent.trim());
        button.textContent = "Copied";
      } catch {
        button.textContent = "Copy failed";
      }
      setTimeout(() => (button.textContent = "Copy"), 2000);
    });
    block.after(button);
  }
}

// Disk format from a file name: what the extension usually means.
const FORMATS = {
  qcow2: "qcow2", qcow: "qcow2", img: "qcow2", raw: "raw", iso: "iso", vmdk: "vmdk",
  vdi: "vdi", vhd: "vhd", vhdx: "vhdx", ploop: "ploop", ami: "ami", ari: "ari", aki: "aki",
};

function guessFromFile(form, file) {
  const dot = file.name.lastIndexOf(".");
  const extension = dot > 0 ? file.name.slice(dot + 1).toLowerCase() : "";
  const name = $("#name", form);
  if (name && !name.value.trim()) name.value = dot > 0 ? file.name.slice(0, dot) : file.name;
  const format = $("#disk_format", form);
  if (format && FORMATS[extension]) format.value = FORMATS[extension];
}

// The message of an API error body (Glance's JSON), or the text itself.
function apiMessage(text, status) {
  try {
    const body = JSON.parse(text);
    if (body && typeof body.message === "string") return body.message;
  } catch {
    // not JSON
  }
  return text.trim() || `The server answered ${status}.`;
}

function uploader(form, imageId) {
  const status = $("#upload-status", form);
  const progress = $("#progress", form);
  const text = $("#progress-text", form);
  const error = $("#upload-error", form);
  const cancel = $("#cancel-upload", form);
  const retry = $("#retry-upload", form);
  const csrf = form.querySelector("input[name=csrf]").value;
  let request = null;
  let lastPercent = -1;

  const fail = (message, id) => {
    error.textContent = message;
    error.hidden = false;
    retry.hidden = false;
    cancel.hidden = true;
    const link = document.createElement("a");
    link.href = `/ui/images/${id}`;
    link.textContent = " Open the image's page.";
    error.append(link);
  };

  const start = (id, file) => {
    status.hidden = false;
    error.hidden = true;
    retry.hidden = true;
    cancel.hidden = false;
    progress.value = 0;
    lastPercent = -1;
    text.textContent = "Starting upload…";
    request = new XMLHttpRequest();
    request.open("PUT", `/ui/images/${id}/file`);
    request.setRequestHeader("Content-Type", "application/octet-stream");
    request.setRequestHeader("Accept", "application/json");
    request.setRequestHeader("X-CSRF-Token", csrf);
    request.setRequestHeader("X-OpenStack-Image-Size", String(file.size));
    request.upload.addEventListener("progress", (event) => {
      if (!event.lengthComputable || event.total === 0) return;
      const percent = Math.floor((event.loaded / event.total) * 100);
      if (percent === lastPercent) return;
      lastPercent = percent;
      progress.value = percent;
      text.textContent = `${percent} % (${humanSize(event.loaded)} of ${humanSize(event.total)})`;
    });
    request.upload.addEventListener("load", () => {
      progress.value = 100;
      text.textContent = "100 %: verifying (the server is checking and storing the image)…";
    });
    request.addEventListener("load", () => {
      if (request.status >= 200 && request.status < 300) {
        text.textContent = "Upload complete.";
        window.location.assign(`/ui/images/${id}?notice=uploaded`);
      } else {
        text.textContent = "Upload failed.";
        fail(apiMessage(request.responseText, request.status), id);
      }
    });
    request.addEventListener("error", () => {
      text.textContent = "Upload failed.";
      fail("The connection to the server failed before the upload finished.", id);
    });
    request.addEventListener("abort", () => {
      text.textContent = "Upload cancelled: the image stays queued, with no data.";
      cancel.hidden = true;
      retry.hidden = false;
    });
    request.send(file);
  };

  cancel.addEventListener("click", () => {
    if (request) request.abort();
  });
  return { start, retry };
}

// The create page: create the image with the form, then stream the file to it.
function createForm(form) {
  const input = $("#file", form);
  input.addEventListener("change", () => {
    if (input.files.length) guessFromFile(form, input.files[0]);
  });
  const upload = uploader(form, null);
  let imageId = null;
  upload.retry.addEventListener("click", () => {
    if (imageId && input.files.length) upload.start(imageId, input.files[0]);
  });
  form.addEventListener("submit", async (event) => {
    if (!input.files.length) return; // no file: the plain form post
    event.preventDefault();
    const button = $("#create-button", form);
    button.disabled = true;
    try {
      if (!imageId) {
        const response = await fetch(form.action, {
          method: "POST",
          body: new URLSearchParams(new FormData(form)),
        });
        const match = /\/ui\/images\/([0-9a-f-]{36})(\?|$)/.exec(response.url);
        if (!match) {
          const page = new DOMParser().parseFromString(await response.text(), "text/html");
          const message = $("#form-error", page) || $("#error-message", page);
          const status = $("#upload-status", form);
          status.hidden = false;
          const error = $("#upload-error", form);
          error.textContent = message ? message.textContent : `The server answered ${response.status}.`;
          error.hidden = false;
          $("#cancel-upload", form).hidden = true;
          button.disabled = false;
          return;
        }
        imageId = match[1];
      }
      upload.start(imageId, input.files[0]);
    } catch {
      button.disabled = false;
    }
  });
}

// The details page of a queued image: stream a file to it.
function uploadForm(form) {
  const input = $("#file", form);
  const upload = uploader(form, form.dataset.image);
  upload.retry.addEventListener("click", () => {
    if (input.files.length) upload.start(form.dataset.image, input.files[0]);
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.files.length) upload.start(form.dataset.image, input.files[0]);
  });
}

reveal();
poll();
copyButtons();
const create = $("#create-form");
if (create) createForm(create);
const upload = $("#upload-form");
if (upload) uploadForm(upload);

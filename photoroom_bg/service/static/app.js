// The service's page: start a job, follow its event stream, show each cut-out beside its
// original. Plain JavaScript, no build step; talks only to this service.
"use strict";

const $ = (id) => document.getElementById(id);
let chosen = [];
let authRequired = false;

function headers() {
  const token = $("token").value.trim();
  if (token) sessionStorage.setItem("photoroom-bg-token", token);
  return token ? { Authorization: "Bearer " + token } : {};
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

async function problemText(response) {
  try {
    const body = await response.json();
    return (body.title || "Error") + (body.detail ? ": " + body.detail : "") + " [" + (body.code || response.status) + "]";
  } catch (err) {
    return "HTTP " + response.status;
  }
}

function pick(files) {
  chosen = Array.from(files).filter((f) => f.type.startsWith("image/"));
  $("picked").textContent = chosen.length ? chosen.length + " image(s): " + chosen.map((f) => f.name).join(", ") : "";
}

function card(index, name, originalSrc) {
  const li = document.createElement("li");
  li.className = "card";
  li.id = "item-" + index;
  li.innerHTML =
    '<div class="pair"><figure><img class="original" alt="original"><figcaption></figcaption></figure>' +
    '<figure><div class="checker"><img class="cutout" alt="cut-out" hidden></div><figcaption><a class="download" hidden>Download</a></figcaption></figure></div>' +
    '<p class="state pending">pending</p>';
  const original = li.querySelector("img.original");
  if (originalSrc) original.src = originalSrc;
  li.querySelector("figcaption").textContent = name;
  $("results").appendChild(li);
}

async function showItem(item) {
  const li = $("item-" + item.index);
  if (!li) return;
  const state = li.querySelector(".state");
  state.className = "state " + item.status;
  state.textContent = item.error ? item.status + ": " + item.error.code + " (" + item.error.message + ")" : item.status;
  if (!item.stored || !item.output_url) return;
  const response = await fetch(item.output_url, { headers: headers() });
  if (!response.ok) {
    state.textContent = "cut-out not available: " + (await problemText(response));
    return;
  }
  const url = URL.createObjectURL(await response.blob());
  const img = li.querySelector("img.cutout");
  img.src = url;
  img.hidden = false;
  const link = li.querySelector("a.download");
  link.href = url;
  link.download = (item.name || "cutout") + "." + (item.key || "x.png").split(".").pop();
  link.hidden = false;
}

function showProgress(progress, total) {
  if (!progress) return;
  const done = (progress.done !== undefined) ? progress.done : 0;
  $("bar").max = total || 1;
  $("bar").value = done;
  const eta = progress.eta ? ", about " + Math.ceil(progress.eta) + " s left" : "";
  $("summary").textContent = done + " of " + total + " done (" + (progress.stored || 0) + " stored, " + (progress.failed || 0) + " failed)" + eta;
}

async function follow(job) {
  const response = await fetch(job.events_url, { headers: headers() });
  if (!response.ok || !response.body) throw new Error(await problemText(response));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  const pending = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (!data) continue;
      const payload = JSON.parse(data);
      if (event === "item") pending.push(showItem(payload));
      else if (event === "progress") showProgress(payload, job.image_count);
      else if (event === "done") {
        const counts = payload.counts || {};
        $("bar").value = $("bar").max;
        $("summary").textContent = "Job " + payload.status + ": " + Object.entries(counts).map(([k, v]) => v + " " + k).join(", ");
      }
    }
  }
  await Promise.all(pending);
}

async function start(event) {
  event.preventDefault();
  showError("");
  const urls = $("urls").value.split(/\s+/).filter(Boolean);
  if (!chosen.length && !urls.length) {
    showError("Choose at least one image or paste a URL.");
    return;
  }
  const form = new FormData();
  for (const file of chosen) form.append("files", file, file.name);
  if (urls.length) form.append("image_urls", urls.join("\n"));
  $("start").disabled = true;
  $("results").innerHTML = "";
  try {
    const response = await fetch("api/v2/remove-backgrounds", { method: "POST", body: form, headers: headers() });
    if (!response.ok) throw new Error(await problemText(response));
    const job = await response.json();
    chosen.forEach((file, i) => card(i, file.name, URL.createObjectURL(file)));
    urls.forEach((url, i) => card(chosen.length + i, url, url));
    $("status").hidden = false;
    $("zip").hidden = true;
    showProgress({ done: 0 }, job.image_count);
    await follow(job);
    $("zip").dataset.url = job.zip_url;
    $("zip").hidden = false;
  } catch (err) {
    showError(err.message || String(err));
  } finally {
    $("start").disabled = false;
  }
}

async function downloadZip(event) {
  event.preventDefault();
  const response = await fetch($("zip").dataset.url, { headers: headers() });
  if (!response.ok) {
    showError(await problemText(response));
    return;
  }
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = "cutouts.zip";
  link.click();
}

async function init() {
  $("token").value = sessionStorage.getItem("photoroom-bg-token") || "";
  try {
    const response = await fetch("./", { headers: { Accept: "application/json" } });
    authRequired = response.ok && (await response.json()).auth_required;
  } catch (err) {
    authRequired = true;
  }
  $("token-row").hidden = !authRequired;
  $("files").addEventListener("change", (e) => pick(e.target.files));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); pick(e.dataTransfer.files); });
  $("job-form").addEventListener("submit", start);
  $("zip").addEventListener("click", downloadZip);
}

document.addEventListener("DOMContentLoaded", init);

/* The AI node inside OHIF 3 (an extension, a plain ES module: no build step).
 *
 * The node's app-config names this file in `extensions`; OHIF imports it by URL at start-up
 * (its loadModule: `(await import(url)).default`) and calls `onModeEnter` of every registered
 * extension whenever a viewer mode opens, so the panel it adds works in every mode without a
 * mode of its own. The panel is plain DOM over the viewer (no React: OHIF bundles its own and
 * exposes none), and talks only to relative `/ai/...` URLs with JSON bodies and no query
 * strings on POSTs, so it works through Orthanc's plugin proxy and through a front door alike.
 *
 * What a radiologist gets, for the series shown in the active viewport:
 * - the study's AI jobs, and "Run AI" with the pipelines that can take the series;
 * - click-to-segment: while the tool is on, a click adds an object point, a shift- or
 *   ctrl-click a background point, a drag a box; the 3D mask is an OHIF segmentation (a
 *   cornerstone labelmap of the displayed series, one per object, listed in OHIF's Segmentation
 *   panel and drawn by cornerstone on every viewport showing the series); Undo takes the last
 *   prompt back; Accept stores a DICOM-SEG (SEMIAUTOMATIC) and loads it into the study;
 * - a model picker listing the interactive service's models (SAM 2, SAM-ONNX when configured);
 * - the series is prefetched by the service when it is opened, so the first click is quick.
 *
 * Voxel indices are those of the interactive API: x = column, y = row, z = the slice's rank
 * by position along the normal (row direction x column direction).
 */

const ID = 'ainode-ai';
const POLL_MS = 700;
const JOBS_EVERY_MS = 5000;
const DRAG_PX = 6; // a press that moves farther is a box, not a click
// An object is a segmentation of one segment, numbered as the object: cornerstone colours a
// segment by its number, so objects are told apart (then the colour table's 255 again).
const SEGMENT_COLOURS = 255;
const SEGMENTATION_PANEL = '@ohif/extension-cornerstone.panelModule.panelSegmentation';
const RENDERED = 'CORNERSTONE_IMAGE_RENDERED';

// -- talking to the node ---------------------------------------------------------------------

async function call(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const answer = await fetch(path, init);
  const text = await answer.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (error) {
    data = null;
  }
  if (!answer.ok) {
    const reason = (data && (data.error || data.detail || data.message)) || text || answer.statusText;
    const error = new Error(`${answer.status}: ${typeof reason === 'string' ? reason : JSON.stringify(reason)}`);
    error.type = data && data.type; // the interactive service's error class
    throw error;
  }
  return data;
}

/** The interactive API's mask: packbits (MSB first) of the C-order 0/1 volume, gzip, base64. */
async function decodeMask(mask) {
  const raw = Uint8Array.from(atob(mask.data), c => c.charCodeAt(0));
  const stream = new Blob([raw]).stream().pipeThrough(new DecompressionStream('gzip'));
  const bits = new Uint8Array(await new Response(stream).arrayBuffer());
  return { shape: mask.shape, bits };
}

// -- geometry --------------------------------------------------------------------------------

const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
const sub = (a, b) => [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
const cross = (a, b) => [
  a[1] * b[2] - a[2] * b[1],
  a[2] * b[0] - a[0] * b[2],
  a[0] * b[1] - a[1] * b[0],
];

/** The series' voxel grid as the interactive service indexes it, from cornerstone's metadata. */
function seriesGeometry(imageIds, metaData) {
  const planes = imageIds.map(imageId => ({ imageId, plane: metaData.get('imagePlaneModule', imageId) }));
  if (!planes.length || planes.some(p => !p.plane || !p.plane.imagePositionPatient)) {
    return null;
  }
  const first = planes[0].plane;
  const rowCos = first.rowCosines.map(Number);
  const colCos = first.columnCosines.map(Number);
  const normal = cross(rowCos, colCos);
  planes.sort((a, b) => dot(a.plane.imagePositionPatient, normal) - dot(b.plane.imagePositionPatient, normal));
  const zOf = new Map(planes.map((p, z) => [p.imageId, z]));
  return {
    zOf,
    imageIds: planes.map(p => p.imageId),
    positions: planes.map(p => p.plane.imagePositionPatient.map(Number)),
    rowCos,
    colCos,
    normal,
    columnSpacing: Number(first.columnPixelSpacing), // between columns, along a row
    rowSpacing: Number(first.rowPixelSpacing),
    rows: Number(first.rows),
    columns: Number(first.columns),
  };
}

/** The slice nearest a patient-space point (by position along the series' normal). */
function nearestSlice(g, world) {
  const along = dot(world, g.normal);
  let best = 0;
  g.positions.forEach((p, z) => {
    if (Math.abs(dot(p, g.normal) - along) < Math.abs(dot(g.positions[best], g.normal) - along)) {
      best = z;
    }
  });
  return best;
}

/** Patient coordinates of voxel (column, row) on slice z. */
function voxelToWorld(g, x, y, z) {
  const p = g.positions[z];
  return [0, 1, 2].map(i => p[i] + x * g.columnSpacing * g.rowCos[i] + y * g.rowSpacing * g.colCos[i]);
}

function worldToVoxel(g, world, z) {
  const d = sub(world, g.positions[z]);
  return { x: dot(d, g.rowCos) / g.columnSpacing, y: dot(d, g.colCos) / g.rowSpacing };
}

// -- the mask as a labelmap ------------------------------------------------------------------

/** The segment number (and so the colour) of the n-th object, from 1. */
function segmentOf(object) {
  return ((object - 1) % SEGMENT_COLOURS) + 1;
}

/** One labelmap image's pixels (row by row) from bits [base, base + data.length) of the mask
 * (packbits, MSB first), as ``segment``: cleared at native speed, then set only where a mask
 * byte is not 0. */
function writeSlice(bits, base, data, segment) {
  data.fill(0);
  const n = data.length;
  let i = 0;
  if ((base & 7) === 0) {
    const first = base >> 3;
    const bytes = n >> 3;
    for (let j = 0; j < bytes; j++) {
      const byte = bits[first + j];
      if (byte) {
        for (let k = 0; k < 8; k++) {
          if (byte & (0x80 >> k)) {
            data[(j << 3) + k] = segment;
          }
        }
      }
    }
    i = bytes << 3;
  }
  for (; i < n; i++) {
    const bit = base + i;
    if (bits[bit >> 3] & (0x80 >> (bit & 7))) {
      data[i] = segment;
    }
  }
}

/** Write the service's mask into a segmentation's labelmap images, slice by slice.
 *
 * The labelmap has one image per image of the series, each naming the image it labels
 * (`referencedImageId`); an image's slice in the mask is its rank by position along the normal,
 * found from cornerstone's metadata, never from the images' order. Returns the labelmap
 * slices (image indices) written. */
function writeLabelmap(cs, segmentation, g, mask, segment) {
  const [depth, rows, columns] = mask.shape;
  if (depth !== g.positions.length || rows !== g.rows || columns !== g.columns) {
    throw new Error(`the mask (${mask.shape.join(' x ')}) is not the shape of the series shown`);
  }
  const labelmap = segmentation.representationData.Labelmap;
  const size = rows * columns;
  const modified = [];
  labelmap.imageIds.forEach((imageId, index) => {
    const image = cs.cache.getImage(imageId);
    if (!image || !image.voxelManager) {
      return;
    }
    let z = g.zOf.get(image.referencedImageId);
    if (z === undefined) {
      const plane = cs.metaData.get('imagePlaneModule', image.referencedImageId);
      z = plane && plane.imagePositionPatient ? nearestSlice(g, plane.imagePositionPatient.map(Number)) : -1;
    }
    const data = image.voxelManager.getScalarData();
    if (z < 0 || z >= depth || data.length !== size) {
      return;
    }
    writeSlice(mask.bits, z * size, data, segment);
    image.voxelManager.setScalarData(data);
    modified.push(index);
  });
  return modified;
}

// -- the extension ---------------------------------------------------------------------------

class AiPanel {
  constructor({ servicesManager, extensionManager }) {
    this.services = servicesManager.services;
    this.extensionManager = extensionManager;
    this.viewportId = null;
    this.viewport = null;
    this.element = null;
    this.overlay = null;
    this.series = null; // {uid, study, orthancId, geometry}
    this.session = null;
    this.prompts = [];
    this.mask = null;
    this.segmentationId = null; // the object's OHIF segmentation, made on its first answer
    this.accepted = false; // whether the object was stored (its segmentation then stays)
    this.objects = 0;
    this.segmentNumber = null; // the object's one segment in its segmentation
    this.busy = false;
    this.pending = false;
    this.active = false;
    this.drag = null;
    this.jobsAt = 0;
    this.listeners = [];
    this.root = this.build();
    document.body.appendChild(this.root);
    this.timer = window.setInterval(() => this.poll(), POLL_MS);
    this.loadModels();
    this.poll();
  }

  destroy() {
    window.clearInterval(this.timer);
    this.detach();
    this.root.remove();
  }

  libraries() {
    const entry = this.extensionManager.getModuleEntry('@ohif/extension-cornerstone.utilityModule.common');
    return entry.exports.getCornerstoneLibraries();
  }

  cornerstone() {
    return this.libraries().cornerstone;
  }

  // -- the panel's DOM ----------------------------------------------------------------------

  build() {
    const root = document.createElement('section');
    root.id = 'ainode-ai-panel';
    root.setAttribute('aria-label', 'AI node');
    root.innerHTML = `
      <style>
        #ainode-ai-panel { position: fixed; left: 6px; bottom: 6px; width: 272px; z-index: 1000;
          background: #090c29ee; color: #e3e8f0; border: 1px solid #3a3f99; border-radius: 6px;
          font: 12px/1.4 system-ui, sans-serif; box-shadow: 0 2px 10px #0008; }
        #ainode-ai-panel header { display: flex; justify-content: space-between; align-items: center;
          padding: 6px 8px; background: #1c2253; border-radius: 6px 6px 0 0; cursor: pointer; }
        #ainode-ai-panel header strong { color: #5acce6; }
        #ainode-ai-panel .body { padding: 6px 8px; display: grid; gap: 5px; max-height: 70vh; overflow: auto; }
        #ainode-ai-panel.collapsed .body { display: none; }
        #ainode-ai-panel h3 { margin: 4px 0 0; font-size: 11px; text-transform: uppercase;
          letter-spacing: .05em; color: #9ba6c4; }
        #ainode-ai-panel button, #ainode-ai-panel select, #ainode-ai-panel input {
          font: inherit; color: #e3e8f0; background: #151a45; border: 1px solid #3a3f99;
          border-radius: 4px; padding: 3px 6px; }
        #ainode-ai-panel button:disabled { opacity: .45; }
        #ainode-ai-panel button[aria-pressed=true] { background: #5acce6; color: #090c29; }
        #ainode-ai-panel * { box-sizing: border-box; }
        #ainode-ai-panel select { max-width: 170px; }
        #ainode-ai-panel .ainode-row { display: flex; gap: 4px; align-items: center; flex-wrap: wrap; }
        #ainode-ai-panel .muted { color: #9ba6c4; }
        #ainode-ai-panel .error { color: #ff8a80; }
        #ainode-ai-panel ul { list-style: none; margin: 0; padding: 0; }
        #ainode-ai-panel li { padding: 2px 0; border-bottom: 1px solid #262b66; }
        #ainode-ai-panel .state-done { color: #7ee2a8; } #ainode-ai-panel .state-failed { color: #ff8a80; }
      </style>
      <header title="Show or hide the AI panel"><strong>AI node</strong><span id="ainode-ai-series" class="muted">no series</span></header>
      <div class="body">
        <h3>AI jobs of this study</h3>
        <ul id="ainode-ai-jobs"><li class="muted">…</li></ul>
        <div class="ainode-row"><select id="ainode-ai-pipeline" aria-label="Pipeline"></select>
          <button id="ainode-ai-run" disabled>Run AI</button></div>
        <div id="ainode-ai-run-status" class="muted"></div>
        <h3>Click to segment</h3>
        <div class="ainode-row"><select id="ainode-ai-model" aria-label="Interactive model"></select>
          <button id="ainode-ai-tool" aria-pressed="false" disabled>Segment</button></div>
        <div class="muted">click: object · shift-click: background · drag: box</div>
        <div class="ainode-row"><button id="ainode-ai-undo" disabled>Undo</button>
          <button id="ainode-ai-reset" disabled>New object</button></div>
        <div class="ainode-row"><input id="ainode-ai-label" aria-label="Label" value="Segment" size="12">
          <button id="ainode-ai-accept" disabled>Accept</button></div>
        <div id="ainode-ai-status" class="muted" role="status"></div>
      </div>`;
    const $ = id => root.querySelector(`#${id}`);
    this.ui = {
      series: $('ainode-ai-series'),
      jobs: $('ainode-ai-jobs'),
      pipeline: $('ainode-ai-pipeline'),
      run: $('ainode-ai-run'),
      runStatus: $('ainode-ai-run-status'),
      model: $('ainode-ai-model'),
      tool: $('ainode-ai-tool'),
      undo: $('ainode-ai-undo'),
      reset: $('ainode-ai-reset'),
      label: $('ainode-ai-label'),
      accept: $('ainode-ai-accept'),
      status: $('ainode-ai-status'),
    };
    root.querySelector('header').addEventListener('click', () => root.classList.toggle('collapsed'));
    this.ui.tool.addEventListener('click', () => this.setActive(!this.active));
    this.ui.undo.addEventListener('click', () => this.undo());
    this.ui.reset.addEventListener('click', () => this.newObject());
    this.ui.accept.addEventListener('click', () => this.accept());
    this.ui.run.addEventListener('click', () => this.runPipeline());
    this.ui.model.addEventListener('change', () => this.newObject());
    return root;
  }

  say(text, error = false) {
    this.ui.status.textContent = text;
    this.ui.status.className = error ? 'error' : 'muted';
  }

  refreshButtons() {
    const ready = Boolean(this.series && this.series.geometry);
    this.ui.tool.disabled = !ready || !this.ui.model.value;
    this.ui.undo.disabled = this.busy || !this.prompts.length;
    this.ui.reset.disabled = this.busy || !this.session;
    this.ui.accept.disabled = this.busy || !this.mask;
    this.root.dataset.busy = this.busy ? 'true' : 'false';
  }

  // -- following the active viewport ----------------------------------------------------------

  poll() {
    try {
      this.follow();
    } catch (error) {
      console.warn('ainode: following the viewport failed', error);
    }
    if (this.series && Date.now() - this.jobsAt > JOBS_EVERY_MS) {
      this.loadJobs();
    }
  }

  follow() {
    const { viewportGridService, cornerstoneViewportService, displaySetService } = this.services;
    const viewportId = viewportGridService.getActiveViewportId();
    const viewport = viewportId ? cornerstoneViewportService.getCornerstoneViewport(viewportId) : null;
    if (!viewport || !viewport.element) {
      return;
    }
    if (viewport !== this.viewport || viewport.element !== this.element) {
      this.detach();
      this.viewportId = viewportId;
      this.viewport = viewport;
      this.attach(viewport.element);
    }
    const state = viewportGridService.getState();
    const entry = state.viewports.get ? state.viewports.get(viewportId) : state.viewports[viewportId];
    const displaySetUid = entry && entry.displaySetInstanceUIDs && entry.displaySetInstanceUIDs[0];
    const displaySet = displaySetUid ? displaySetService.getDisplaySetByUID(displaySetUid) : null;
    if (!displaySet || displaySet.Modality === 'SEG' || !viewport.getImageIds) {
      return;
    }
    const uid = displaySet.SeriesInstanceUID;
    if (!this.series || this.series.uid !== uid) {
      this.openSeries(displaySet);
    }
    if (this.series && !this.series.geometry) {
      const imageIds = viewport.getImageIds();
      this.series.geometry = imageIds && imageIds.length ? seriesGeometry(imageIds, this.cornerstone().metaData) : null;
      if (this.series.geometry) {
        this.root.dataset.series = uid;
        this.refreshButtons();
      }
    }
  }

  openSeries(displaySet) {
    const uid = displaySet.SeriesInstanceUID;
    if (this.session) {
      // the last series' object was not accepted: its session goes now, not at its expiry
      call('DELETE', `/ai/interactive/sessions/${this.session}`).catch(() => undefined);
    }
    this.dropObject();
    this.series = {
      uid,
      study: displaySet.StudyInstanceUID,
      displaySet: displaySet.displaySetInstanceUID,
      orthancId: null,
      geometry: null,
    };
    delete this.root.dataset.series;
    this.session = null;
    this.prompts = [];
    this.mask = null;
    this.draw();
    const name = [displaySet.SeriesNumber ? `#${displaySet.SeriesNumber}` : '', displaySet.SeriesDescription || '']
      .join(' ')
      .trim();
    this.ui.series.textContent = name || displaySet.Modality || 'series';
    this.say('');
    this.refreshButtons();
    // The service decodes the series now, so that the first click finds it ready.
    this.root.dataset.prefetch = 'asked';
    call('POST', `/ai/interactive/series/${encodeURIComponent(uid)}/prefetch`)
      .then(answer => {
        this.root.dataset.prefetch = (answer && answer.state) || 'asked';
      })
      .catch(error => {
        this.root.dataset.prefetch = 'failed';
        console.warn('ainode: prefetch failed', error);
      });
    this.jobsAt = 0;
    this.loadPipelines(uid);
  }

  attach(element) {
    if (window.getComputedStyle(element).position === 'static') {
      element.style.position = 'relative';
    }
    const overlay = document.createElement('canvas');
    overlay.className = 'ainode-ai-overlay';
    Object.assign(overlay.style, {
      position: 'absolute', left: '0', top: '0', width: '100%', height: '100%',
      pointerEvents: 'none', zIndex: '5',
    });
    element.appendChild(overlay);
    this.element = element;
    this.overlay = overlay;
    const on = (target, type, handler, capture) => {
      target.addEventListener(type, handler, capture);
      this.listeners.push(() => target.removeEventListener(type, handler, capture));
    };
    on(element, RENDERED, () => this.draw(), false);
    // Capturing on the viewport's element comes before cornerstone's tools (on its canvas).
    on(element, 'pointerdown', event => this.pointerDown(event), true);
    on(element, 'mousedown', event => this.swallow(event), true);
    on(element, 'contextmenu', event => this.swallow(event), true);
    on(window, 'pointermove', event => this.pointerMove(event), true);
    on(window, 'pointerup', event => this.pointerUp(event), true);
    this.draw();
  }

  detach() {
    this.listeners.forEach(remove => remove());
    this.listeners = [];
    if (this.overlay) {
      this.overlay.remove();
    }
    this.overlay = null;
    this.element = null;
    this.viewport = null;
  }

  // -- jobs and pipelines ----------------------------------------------------------------------

  async loadJobs() {
    this.jobsAt = Date.now();
    const study = this.series && this.series.study;
    if (!study) {
      return;
    }
    try {
      const answer = await call('GET', `/ai/jobs?study=${encodeURIComponent(study)}`);
      const list = this.ui.jobs;
      list.replaceChildren();
      // Decisions that ran nothing (a guard, no rule matched) are not AI jobs to a reader.
      const jobs = answer.jobs.filter(job => job.pipeline);
      for (const job of jobs) {
        const item = document.createElement('li');
        item.className = 'ainode-ai-job';
        const state = document.createElement('span');
        state.className = `state-${job.state}`;
        state.textContent = job.state;
        item.append(`${job.pipeline || job.decided_by} · `, state);
        if (job.series_uid === (this.series && this.series.uid)) {
          item.append(' · this series');
        }
        if (job.error) {
          item.title = job.error;
        }
        list.appendChild(item);
      }
      if (!jobs.length) {
        list.innerHTML = '<li class="muted">no AI jobs yet</li>';
      }
    } catch (error) {
      this.ui.jobs.innerHTML = '';
      const item = document.createElement('li');
      item.className = 'error';
      item.textContent = `AI jobs unavailable (${error.message})`;
      this.ui.jobs.appendChild(item);
    }
  }

  async loadPipelines(uid) {
    const select = this.ui.pipeline;
    select.replaceChildren();
    this.ui.run.disabled = true;
    try {
      const matches = await fetch('/tools/lookup', { method: 'POST', body: uid, credentials: 'same-origin' })
        .then(r => (r.ok ? r.json() : []));
      const series = matches.find(m => m.Type === 'Series');
      if (!series || !this.series || this.series.uid !== uid) {
        return;
      }
      this.series.orthancId = series.ID;
      const summary = await call('GET', `/ai/series/${series.ID}/summary`);
      for (const p of summary.pipelines) {
        const option = document.createElement('option');
        option.value = p.pipeline;
        option.textContent = p.pipeline;
        option.disabled = !p.runnable;
        option.title = p.reason || '';
        select.appendChild(option);
      }
      const runnable = summary.pipelines.filter(p => p.runnable);
      if (runnable.length) {
        select.value = runnable[0].pipeline;
        this.ui.run.disabled = false;
      } else {
        this.ui.runStatus.textContent = 'No pipeline here can take this series.';
      }
    } catch (error) {
      this.ui.runStatus.textContent = `Run AI unavailable (${error.message})`;
    }
  }

  async runPipeline() {
    const id = this.series && this.series.orthancId;
    if (!id || !this.ui.pipeline.value) {
      return;
    }
    this.ui.run.disabled = true;
    try {
      const job = await call('POST', `/ai/series/${id}/run`, { pipeline: this.ui.pipeline.value });
      this.ui.runStatus.textContent = `${job.pipeline}: ${job.state}${job.created ? '' : ' (already asked)'}`;
      this.loadJobs();
    } catch (error) {
      this.ui.runStatus.textContent = `Run AI failed: ${error.message}`;
    } finally {
      this.ui.run.disabled = false;
    }
  }

  // -- models ------------------------------------------------------------------------------------

  async loadModels() {
    const select = this.ui.model;
    try {
      const health = await call('GET', '/ai/interactive/health');
      select.replaceChildren();
      for (const model of health.models || []) {
        const option = document.createElement('option');
        option.value = model.name;
        option.textContent = `${model.name}${model.kind && model.kind !== model.name ? ` (${model.kind})` : ''}`;
        option.title = model.loaded ? 'loaded' : 'loads on first use';
        if (model.error) {
          option.disabled = true;
          option.title = model.error;
        }
        select.appendChild(option);
      }
      const usable = [...select.options].find(o => !o.disabled);
      select.value = (usable || { value: '' }).value;
      this.root.dataset.models = [...select.options].map(o => o.value).join(',');
    } catch (error) {
      this.say(`Interactive segmentation unavailable (${error.message})`, true);
    }
    this.refreshButtons();
  }

  /** A model whose weights do not load stays listed, disabled, with the service's reason. */
  modelUnavailable(name, reason) {
    const option = [...this.ui.model.options].find(o => o.value === name);
    if (!option) {
      return;
    }
    option.disabled = true;
    option.title = reason;
    option.textContent = `${option.textContent} (unavailable)`;
    const usable = [...this.ui.model.options].find(o => !o.disabled);
    this.ui.model.value = usable ? usable.value : '';
    this.root.dataset.unavailable = [...this.ui.model.options].filter(o => o.disabled).map(o => o.value).join(',');
    this.refreshButtons();
  }

  // -- clicks --------------------------------------------------------------------------------------

  setActive(active) {
    this.active = active;
    this.ui.tool.setAttribute('aria-pressed', String(active));
    this.root.dataset.tool = active ? 'on' : 'off';
    if (active && this.element) {
      this.element.style.cursor = 'crosshair';
    } else if (this.element) {
      this.element.style.cursor = '';
    }
  }

  swallow(event) {
    if (this.active && (event.button === 0 || event.type === 'contextmenu')) {
      event.stopPropagation();
      event.preventDefault();
    }
  }

  canvasPoint(event) {
    const rect = this.element.getBoundingClientRect();
    return [event.clientX - rect.left, event.clientY - rect.top];
  }

  pointerDown(event) {
    if (!this.active || event.button !== 0 || !this.series || !this.series.geometry) {
      return;
    }
    event.stopPropagation();
    event.preventDefault();
    this.drag = { start: this.canvasPoint(event), end: null, negative: event.shiftKey || event.ctrlKey };
  }

  pointerMove(event) {
    if (!this.drag) {
      return;
    }
    this.drag.end = this.canvasPoint(event);
    this.draw();
  }

  pointerUp(event) {
    if (!this.drag) {
      return;
    }
    event.stopPropagation();
    const drag = this.drag;
    this.drag = null;
    drag.end = this.canvasPoint(event);
    const moved = Math.hypot(drag.end[0] - drag.start[0], drag.end[1] - drag.start[1]);
    const prompt = moved > DRAG_PX ? this.boxPrompt(drag.start, drag.end) : this.pointPrompt(drag.start, drag.negative);
    this.draw();
    if (!prompt) {
      this.say('That is outside the series.', true);
      return;
    }
    this.prompts.push(prompt);
    this.segment();
  }

  /** The slice shown, or null when the view is not in the series' own plane (MPR). */
  currentSlice() {
    const g = this.series.geometry;
    const imageId = this.viewport.getCurrentImageId && this.viewport.getCurrentImageId();
    if (imageId && g.zOf.has(imageId)) {
      return g.zOf.get(imageId);
    }
    const camera = this.viewport.getCamera();
    if (Math.abs(dot(camera.viewPlaneNormal, g.normal)) < 0.999) {
      return null;
    }
    return nearestSlice(g, camera.focalPoint);
  }

  toVoxel(canvasPoint) {
    const world = this.viewport.canvasToWorld(canvasPoint);
    const z = nearestSlice(this.series.geometry, world); // any view: the click's own slice
    const v = worldToVoxel(this.series.geometry, world, z);
    return { x: Math.round(v.x), y: Math.round(v.y), z };
  }

  inside(v) {
    const g = this.series.geometry;
    return v.x >= 0 && v.y >= 0 && v.x < g.columns && v.y < g.rows;
  }

  pointPrompt(canvasPoint, negative) {
    const v = this.toVoxel(canvasPoint);
    return this.inside(v) ? { point: { x: v.x, y: v.y, z: v.z, label: negative ? 0 : 1 } } : null;
  }

  boxPrompt(a, b) {
    const g = this.series.geometry;
    const p = this.toVoxel(a);
    const q = this.toVoxel(b);
    const clamp = (value, size) => Math.min(Math.max(value, 0), size - 1);
    const box = {
      z: p.z,
      x0: clamp(Math.min(p.x, q.x), g.columns),
      y0: clamp(Math.min(p.y, q.y), g.rows),
      x1: clamp(Math.max(p.x, q.x), g.columns),
      y1: clamp(Math.max(p.y, q.y), g.rows),
    };
    return box.x1 > box.x0 && box.y1 > box.y0 ? { box } : null;
  }

  // -- the service ------------------------------------------------------------------------------

  async segment() {
    if (!this.prompts.length) {
      return;
    }
    if (this.busy) {
      this.pending = true; // sent when the answer in flight is in, with every prompt so far
      return;
    }
    this.busy = true;
    this.refreshButtons();
    this.say('Segmenting…');
    const body = {
      series: this.series.uid,
      model: this.ui.model.value,
      points: this.prompts.filter(p => p.point).map(p => p.point),
      boxes: this.prompts.filter(p => p.box).map(p => p.box),
      use_previous_mask: false,
    };
    if (this.session) {
      body.session = this.session;
    }
    const uid = this.series.uid;
    try {
      const answer = await call('POST', '/ai/interactive/segment', body);
      const mask = await decodeMask(answer.mask);
      if (!this.series || this.series.uid !== uid) {
        return; // another series is shown now
      }
      this.session = answer.session;
      this.mask = mask;
      if (await this.showMask()) {
        const ms = answer.timings && answer.timings.total_ms;
        this.say(`${answer.voxels} voxels${ms !== undefined ? ` · ${Math.round(ms)} ms` : ''}`);
      }
      this.root.dataset.voxels = String(answer.voxels);
    } catch (error) {
      this.prompts.pop(); // a refused prompt is not kept
      this.say(`Segmentation failed: ${error.message}`, true);
      if (error.type === 'ModelUnavailableError') {
        this.modelUnavailable(body.model, error.message);
      }
    } finally {
      this.busy = false;
      this.refreshButtons();
      this.draw();
      if (this.pending) {
        this.pending = false;
        this.segment();
      }
    }
  }

  async undo() {
    this.prompts.pop();
    if (this.prompts.length) {
      await this.segment();
    } else {
      await this.newObject();
    }
  }

  async newObject() {
    const session = this.session;
    this.dropObject();
    this.prompts = [];
    this.mask = null;
    this.session = null;
    delete this.root.dataset.voxels;
    this.say('');
    this.draw();
    this.refreshButtons();
    if (session) {
      await call('DELETE', `/ai/interactive/sessions/${session}`).catch(() => undefined);
    }
  }

  async accept() {
    if (!this.session || !this.mask) {
      return;
    }
    this.busy = true;
    this.refreshButtons();
    this.say('Storing…');
    try {
      const answer = await call('POST', `/ai/interactive/sessions/${this.session}/accept`, {
        label: { name: this.ui.label.value.trim() || 'Segment' },
        store: true,
      });
      const seg = answer.seg;
      this.accepted = true;
      this.nameSegment();
      this.root.dataset.accepted = seg.series_instance_uid;
      this.say(`Stored as a DICOM-SEG in the study (${seg.stored ? 'new' : 'already stored'}).`);
      this.showNewSeries(seg.series_instance_uid);
    } catch (error) {
      this.say(`Accept failed: ${error.message}`, true);
    } finally {
      this.busy = false;
      this.refreshButtons();
    }
  }

  /** Load the new SEG series into the viewer, so that it shows in the study's series list.
   *
   * OHIF caches a study's metadata request under "<data source name>:<study>" (its own
   * deleteStudyMetadataPromise is given the bare study UID and so misses it): the entry goes
   * before and after a request for the new series alone, so later loads fetch afresh. */
  async showNewSeries(seriesUid) {
    try {
      const [dataSource] = this.extensionManager.getActiveDataSource();
      const study = this.series.study;
      const key = `${dataSource.getConfig().name}:${study}`;
      dataSource.deleteStudyMetadataPromise(key);
      await dataSource.retrieve.series.metadata({
        StudyInstanceUID: study,
        filters: { seriesInstanceUID: [seriesUid] },
      });
      dataSource.deleteStudyMetadataPromise(key);
    } catch (error) {
      console.warn('ainode: loading the new SEG into the viewer failed', error);
    }
  }

  // -- the object as an OHIF segmentation --------------------------------------------------------

  /** Show the mask as the object's segmentation: made on its first answer (again, should the
   * user have deleted it in OHIF's Segmentation panel), its labelmap rewritten on each answer.
   * Says why when OHIF refuses; the object's session and its prompts are kept either way. */
  async showMask() {
    const { segmentationService } = this.services;
    if (!this.mask || !this.series || !this.series.geometry) {
      return false;
    }
    try {
      if (!this.segmentationId || !segmentationService.getSegmentation(this.segmentationId)) {
        this.segmentationId = await this.createSegmentation();
      }
      const segmentation = segmentationService.getSegmentation(this.segmentationId);
      const modified = writeLabelmap(
        this.cornerstone(), segmentation, this.series.geometry, this.mask, this.segmentNumber);
      if (modified.length) {
        // Every slice: a volume viewport's slice indices are not the labelmap images' order.
        const { segmentation: csSegmentation } = this.libraries().cornerstoneTools;
        csSegmentation.triggerSegmentationEvents.triggerSegmentationDataModified(this.segmentationId);
      }
    } catch (error) {
      console.warn('ainode: showing the mask as a segmentation failed', error);
      this.say(`The mask could not be shown as a segmentation: ${error.message}`, true);
      return false;
    }
    this.root.dataset.segmentation = this.segmentationId;
    return true;
  }

  /** An empty labelmap segmentation of the displayed series, with one segment, shown on every
   * viewport that shows the series and listed in OHIF's Segmentation panel. */
  async createSegmentation() {
    const { segmentationService, displaySetService, viewportGridService, panelService } = this.services;
    const displaySet = displaySetService.getDisplaySetByUID(this.series.displaySet);
    this.objects += 1;
    this.segmentNumber = segmentOf(this.objects);
    const segmentationId = `ainode-${this.cornerstone().utilities.uuidv4()}`;
    await segmentationService.createLabelmapForDisplaySet(displaySet, {
      segmentationId,
      label: `AI object ${this.objects}`,
      segments: { [this.segmentNumber]: { label: this.segmentLabel(), active: true } },
    });
    const state = viewportGridService.getState();
    const viewports = state.viewports.entries ? [...state.viewports.entries()] : Object.entries(state.viewports);
    for (const [viewportId, entry] of viewports) {
      if (entry.displaySetInstanceUIDs && entry.displaySetInstanceUIDs.includes(this.series.displaySet)) {
        try {
          await segmentationService.addSegmentationRepresentation(viewportId, { segmentationId });
        } catch (error) {
          console.warn(`ainode: showing the segmentation in viewport ${viewportId} failed`, error);
        }
      }
    }
    if (panelService && panelService.getPanels('right').some(panel => panel.id === SEGMENTATION_PANEL)) {
      panelService.activatePanel(SEGMENTATION_PANEL, true);
    }
    return segmentationId;
  }

  segmentLabel() {
    return this.ui.label.value.trim() || 'Segment';
  }

  /** The segment takes the label it was stored under. */
  nameSegment() {
    const { segmentationService } = this.services;
    if (this.segmentationId && segmentationService.getSegmentation(this.segmentationId)) {
      segmentationService.setSegmentLabel(this.segmentationId, this.segmentNumber, this.segmentLabel());
    }
  }

  /** The object is given up: its segmentation goes unless it was stored. */
  dropObject() {
    const { segmentationService } = this.services;
    const id = this.segmentationId;
    if (id && !this.accepted && segmentationService.getSegmentation(id)) {
      segmentationService.remove(id);
    }
    this.segmentationId = null;
    this.accepted = false;
    delete this.root.dataset.segmentation;
  }

  // -- drawing ----------------------------------------------------------------------------------

  draw() {
    const overlay = this.overlay;
    if (!overlay || !this.element) {
      return;
    }
    const dpr = window.devicePixelRatio || 1;
    const width = Math.round(this.element.clientWidth * dpr);
    const height = Math.round(this.element.clientHeight * dpr);
    if (overlay.width !== width || overlay.height !== height) {
      overlay.width = width;
      overlay.height = height;
    }
    const ctx = overlay.getContext('2d');
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, width, height);
    if (!this.series || !this.series.geometry || !this.viewport) {
      return;
    }
    let z;
    try {
      z = this.currentSlice();
    } catch (error) {
      z = null;
    }
    if (z === null) {
      return; // prompts are drawn on the series' own plane only
    }
    const g = this.series.geometry;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    for (const prompt of this.prompts) {
      if (prompt.point && prompt.point.z === z) {
        const [cx, cy] = this.viewport.worldToCanvas(voxelToWorld(g, prompt.point.x, prompt.point.y, z));
        ctx.fillStyle = prompt.point.label ? '#00e676' : '#ff1744';
        ctx.beginPath();
        ctx.arc(cx, cy, 4, 0, 2 * Math.PI);
        ctx.fill();
      }
      if (prompt.box && prompt.box.z === z) {
        const b = prompt.box;
        const [ax, ay] = this.viewport.worldToCanvas(voxelToWorld(g, b.x0, b.y0, z));
        const [bx, by] = this.viewport.worldToCanvas(voxelToWorld(g, b.x1, b.y1, z));
        ctx.strokeStyle = '#00e676';
        ctx.strokeRect(ax, ay, bx - ax, by - ay);
      }
    }
    if (this.drag && this.drag.end) {
      const [a, b] = [this.drag.start, this.drag.end];
      ctx.strokeStyle = '#5acce6';
      ctx.setLineDash([4, 3]);
      ctx.strokeRect(a[0], a[1], b[0] - a[0], b[1] - a[1]);
      ctx.setLineDash([]);
    }
  }
}

let panel = null;

export default {
  id: ID,
  version: '1.0.0',
  onModeEnter({ servicesManager, extensionManager }) {
    if (panel) {
      panel.destroy();
    }
    panel = new AiPanel({ servicesManager, extensionManager });
    // Tests and scripts reach the active viewport as the panel sees it.
    window.ainodeOhif = panel;
  },
  onModeExit() {
    if (panel) {
      panel.destroy();
      panel = null;
      window.ainodeOhif = undefined;
    }
  },
};

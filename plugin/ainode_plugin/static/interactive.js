/* Click-to-segment on one series through the node's interactive API (/ai/interactive/...).
 * Slices come from Orthanc (/instances/{id}/rendered), ordered as the service indexes them:
 * by position along the normal (row direction x column direction). The mask answer is
 * packbits-gzip-base64 in [slice, row, column] C order (worker/ainode_worker/interactive). */
(function () {
  'use strict';
  var ui = window.AinodeUi;
  var el = ui.el;
  var $ = function (id) { return document.getElementById(id); };
  var DISPLAY_PX = 640;
  var IMAGE_TYPES = ['CT', 'MR', 'PT', 'NM', 'US', 'XA', 'CR', 'DX', 'MG', 'OT'];

  var state = {
    seriesId: null, slices: [], rows: 0, cols: 0, z: 0, scale: 1, images: {},
    clicks: [], session: null, mask: null, busy: false, studyUid: null
  };

  function showMessage(text, isError) {
    var box = $('message');
    box.textContent = text;
    box.className = text ? 'message' + (isError ? ' error' : '') : 'message hidden';
  }

  // -- series picker ----------------------------------------------------------------------

  function showPicker() {
    $('picker').classList.remove('hidden');
    ui.api('/ai/series-summaries').then(function (answer) {
      var rows = answer.series.filter(function (s) {
        return IMAGE_TYPES.indexOf(s.modality) >= 0 && s.images > 1;
      }).sort(function (a, b) {
        return (b.study_date || '').localeCompare(a.study_date || '') ||
          (a.study_description || '').localeCompare(b.study_description || '') ||
          (Number(a.series_number) || 0) - (Number(b.series_number) || 0);
      }).map(function (s) {
        return el('tr', { 'data-series': s.series_id }, [
          el('td', { text: ui.dicomDate(s.study_date) }),
          el('td', { text: s.study_description || '' }),
          el('td', { 'class': 'num', text: s.series_number || '' }),
          el('td', {}, [el('a', { href: '?series=' + s.series_id, text: s.series_description || '(no description)' })]),
          el('td', { text: s.modality }),
          el('td', { 'class': 'num', text: String(s.images) })
        ]);
      });
      if (!rows.length) {
        rows = [el('tr', {}, [el('td', { colspan: '6', 'class': 'muted', text: 'No image series on this node.' })])];
      }
      ui.replaceChildren(document.querySelector('#series-list tbody'), rows);
    }).catch(function (error) { showMessage('Could not list series: ' + error.message, true); });
  }

  // -- geometry ---------------------------------------------------------------------------

  function numbers(text) { return (text || '').split('\\').map(Number); }

  function orderSlices(instances) {
    var first = instances[0].MainDicomTags;
    var iop = numbers(first.ImageOrientationPatient);
    if (iop.length !== 6 || iop.some(isNaN)) {
      throw new Error('the series has no ImageOrientationPatient: not a volume this page can show');
    }
    var r = iop.slice(0, 3), c = iop.slice(3, 6);
    var normal = [r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0]];
    var slices = instances.map(function (instance) {
      var p = numbers(instance.MainDicomTags.ImagePositionPatient);
      return { id: instance.ID, position: p[0] * normal[0] + p[1] * normal[1] + p[2] * normal[2] };
    });
    slices.sort(function (a, b) { return a.position - b.position; });
    return slices;
  }

  // -- drawing ----------------------------------------------------------------------------

  function sliceUrl(z) {
    var choice = $('window').value;
    var id = state.slices[z].id;
    if (choice === 'auto') { return ui.ROOT + '/instances/' + id + '/preview'; }
    var wl = choice.split(',');
    return ui.ROOT + '/instances/' + id + '/rendered?window-center=' + wl[0] + '&window-width=' + wl[1];
  }

  function image(z) {
    var key = z + '@' + $('window').value;
    if (!state.images[key]) {
      var img = new Image();
      img.onload = function () { if (z === state.z) { draw(); } };
      img.src = sliceUrl(z);
      state.images[key] = img;
    }
    return state.images[key];
  }

  function maskBit(index) {
    return (state.mask.bits[index >> 3] >> (7 - (index & 7))) & 1;
  }

  function overlay(z) {
    var rows = state.rows, cols = state.cols;
    var off = document.createElement('canvas');
    off.width = cols;
    off.height = rows;
    var ctx = off.getContext('2d');
    var data = ctx.createImageData(cols, rows);
    var alpha = Math.round(255 * Number($('opacity').value) / 100);
    var base = z * rows * cols;
    var any = false;
    for (var i = 0; i < rows * cols; i++) {
      if (maskBit(base + i)) {
        data.data[4 * i] = 255; data.data[4 * i + 1] = 60; data.data[4 * i + 2] = 40;
        data.data[4 * i + 3] = alpha;
        any = true;
      }
    }
    ctx.putImageData(data, 0, 0);
    return any ? off : null;
  }

  function draw() {
    var canvas = $('canvas');
    var ctx = canvas.getContext('2d');
    ctx.imageSmoothingEnabled = false;
    ctx.fillStyle = '#000';
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    var img = image(state.z);
    if (img.complete && img.naturalWidth) { ctx.drawImage(img, 0, 0, canvas.width, canvas.height); }
    if (state.mask) {
      var layer = overlay(state.z);
      if (layer) { ctx.drawImage(layer, 0, 0, canvas.width, canvas.height); }
    }
    state.clicks.forEach(function (click) {
      if (click.z !== state.z) { return; }
      ctx.beginPath();
      ctx.arc((click.x + 0.5) * state.scale, (click.y + 0.5) * state.scale, 5, 0, 2 * Math.PI);
      ctx.fillStyle = click.label ? '#2ecc71' : '#e74c3c';
      ctx.fill();
      ctx.strokeStyle = '#fff';
      ctx.stroke();
    });
    $('slice-label').textContent = (state.z + 1) + ' / ' + state.slices.length;
    $('slice').value = state.z;
  }

  function setSlice(z) {
    state.z = Math.max(0, Math.min(state.slices.length - 1, z));
    draw();
    image(Math.min(state.slices.length - 1, state.z + 1));  // prefetch the neighbours
    image(Math.max(0, state.z - 1));
  }

  // -- the interactive API ----------------------------------------------------------------

  function decodeMask(mask) {
    var binary = atob(mask.data);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) { bytes[i] = binary.charCodeAt(i); }
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
    return new Response(stream).arrayBuffer().then(function (buffer) {
      return { shape: mask.shape, bits: new Uint8Array(buffer) };
    });
  }

  function updateButtons() {
    $('undo').disabled = state.busy || !state.clicks.length;
    $('reset').disabled = state.busy || !state.session;
    $('accept').disabled = state.busy || !state.mask || !state.session;
    $('clicks').textContent = String(state.clicks.length);
  }

  function segment() {
    state.busy = true;
    updateButtons();
    showMessage('Segmenting…');
    var body = { series: state.seriesId, model: $('model').value, points: state.clicks };
    if (state.session) { body.session = state.session; }
    return ui.api('/ai/interactive/segment', { method: 'POST', body: body }).then(function (answer) {
      state.session = answer.session;
      if (answer.mask.shape[1] !== state.rows || answer.mask.shape[2] !== state.cols ||
          answer.mask.shape[0] !== state.slices.length) {
        throw new Error('the mask (' + answer.mask.shape.join('×') + ') does not fit the series (' +
          state.slices.length + '×' + state.rows + '×' + state.cols + ')');
      }
      return decodeMask(answer.mask).then(function (mask) {
        state.mask = mask;
        $('voxels').textContent = answer.voxels + ' voxels';
        document.body.setAttribute('data-mask-voxels', String(answer.voxels));
        var t = answer.timings || {};
        $('timing').textContent = t.total_ms !== undefined ? Math.round(t.total_ms) + ' ms' : '–';
        showMessage('');
      });
    }).catch(function (error) {
      showMessage('Segmentation failed: ' + error.message, true);
    }).then(function () {
      state.busy = false;
      updateButtons();
      draw();
    });
  }

  function clearMask() {
    state.mask = null;
    $('voxels').textContent = '–';
    $('timing').textContent = '–';
    document.body.removeAttribute('data-mask-voxels');
  }

  function resetObject() {
    var session = state.session;
    state.clicks = [];
    clearMask();
    updateButtons();
    draw();
    if (!session) { return Promise.resolve(); }
    return ui.api('/ai/interactive/sessions/' + encodeURIComponent(session) + '/reset', { method: 'POST' })
      .catch(function (error) { showMessage('Reset failed: ' + error.message, true); });
  }

  function accept() {
    state.busy = true;
    updateButtons();
    showMessage('Storing the segmentation…');
    var body = { label: { name: $('label').value || 'Interactive segment' }, store: true };
    return ui.api('/ai/interactive/sessions/' + encodeURIComponent(state.session) + '/accept',
      { method: 'POST', body: body }).then(function (answer) {
      var seg = answer.seg || {};
      var children = [el('div', { 'class': 'message', id: 'stored-message',
        text: seg.stored ? 'Stored as a DICOM-SEG (' + answer.voxels + ' voxels).' : 'Built, not stored.' })];
      if (seg.orthanc_series) {
        children.push(el('a', { href: ui.explorer('series', seg.orthanc_series), id: 'stored-series',
          text: 'SEG series in Orthanc Explorer' }));
      }
      if (state.studyUid) {
        children.push(' · ', el('a', { href: ui.ohifStudy(state.studyUid), text: 'open the study in OHIF' }));
      }
      ui.replaceChildren($('stored'), children);
      showMessage('');
    }).catch(function (error) {
      showMessage('Accept failed: ' + error.message, true);
    }).then(function () {
      state.busy = false;
      updateButtons();
    });
  }

  // -- input ------------------------------------------------------------------------------

  function onClick(event, label) {
    event.preventDefault();
    if (state.busy) { showMessage('Still segmenting; click again when it is done.'); return; }
    var rect = event.target.getBoundingClientRect();
    var x = Math.floor((event.clientX - rect.left) / rect.width * state.cols);
    var y = Math.floor((event.clientY - rect.top) / rect.height * state.rows);
    if (x < 0 || y < 0 || x >= state.cols || y >= state.rows) { return; }
    state.clicks.push({ x: x, y: y, z: state.z, label: label });
    draw();
    segment();
  }

  function bindInput() {
    var canvas = $('canvas');
    canvas.addEventListener('click', function (event) { onClick(event, event.shiftKey ? 0 : 1); });
    canvas.addEventListener('contextmenu', function (event) { onClick(event, 0); });
    canvas.addEventListener('wheel', function (event) {
      event.preventDefault();
      setSlice(state.z + (event.deltaY > 0 ? 1 : -1));
    }, { passive: false });
    document.addEventListener('keydown', function (event) {
      if (event.target.tagName === 'INPUT' && event.target.type !== 'range') { return; }
      if (event.key === 'ArrowUp') { event.preventDefault(); setSlice(state.z - 1); }
      if (event.key === 'ArrowDown') { event.preventDefault(); setSlice(state.z + 1); }
    });
    $('slice').addEventListener('input', function (event) { setSlice(Number(event.target.value)); });
    $('window').addEventListener('change', draw);
    $('opacity').addEventListener('input', draw);
    $('undo').addEventListener('click', function () {
      state.clicks.pop();
      if (state.clicks.length) { segment(); } else { resetObject(); }
    });
    $('reset').addEventListener('click', resetObject);
    $('accept').addEventListener('click', accept);
  }

  function loadModels() {
    ui.api('/ai/interactive/health').then(function (health) {
      var select = $('model');
      ui.replaceChildren(select, (health.models || []).map(function (model) {
        return el('option', { value: model.name, text: model.name + ' (' + model.kind + ')' });
      }));
      select.value = 'regiongrow';
      if (!select.value && select.options.length) { select.selectedIndex = 0; }
    }).catch(function (error) {
      showMessage('The interactive segmentation service is not available: ' + error.message, true);
    });
  }

  function openSeries(seriesId) {
    state.seriesId = seriesId;
    $('workspace').classList.remove('hidden');
    bindInput();
    loadModels();
    ui.api('/series/' + encodeURIComponent(seriesId)).then(function (series) {
      var tags = series.MainDicomTags;
      $('series-title').textContent = (tags.Modality || '') + ' · ' + (tags.SeriesDescription || seriesId);
      ui.seriesSummaries([seriesId]).then(function (all) {
        var lines = all[seriesId] && ui.seriesLines(all[seriesId]);
        if (lines) { $('series-title').textContent = [lines.title, lines.kind, lines.study].join(' · '); }
      }).catch(function () { /* the title from the series' own tags stays */ });
      ui.api('/studies/' + series.ParentStudy).then(function (study) {
        state.studyUid = study.MainDicomTags.StudyInstanceUID;
      });
      return ui.api('/series/' + encodeURIComponent(seriesId) + '/instances');
    }).then(function (instances) {
      state.slices = orderSlices(instances);
      $('slice').max = state.slices.length - 1;
      var middle = Math.floor(state.slices.length / 2);
      var first = new Image();
      first.onload = function () {
        state.rows = first.naturalHeight;
        state.cols = first.naturalWidth;
        state.scale = Math.min(DISPLAY_PX / state.cols, DISPLAY_PX / state.rows);
        $('canvas').width = Math.round(state.cols * state.scale);
        $('canvas').height = Math.round(state.rows * state.scale);
        state.images[middle + '@' + $('window').value] = first;
        document.body.setAttribute('data-ready', 'true');
        setSlice(middle);
      };
      first.onerror = function () { showMessage('Orthanc could not render this series.', true); };
      state.z = middle;
      first.src = sliceUrl(middle);
    }).catch(function (error) {
      showMessage('Could not open series ' + seriesId + ': ' + error.message, true);
    });
    updateButtons();
  }

  var seriesId = new URLSearchParams(window.location.search).get('series');
  if (seriesId) { openSeries(seriesId); } else { showPicker(); }
})();

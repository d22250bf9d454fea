/* Helpers shared by the node's pages (no framework, no build step). */
(function () {
  'use strict';

  // The node's root: '' when Orthanc is served at the web root (pages live under /ai/ui/).
  var ROOT = window.location.pathname.replace(/\/ai\/ui(\/.*)?$/, '');

  function api(path, options) {
    options = options || {};
    var init = { method: options.method || 'GET', credentials: 'same-origin', headers: {} };
    if (options.body !== undefined) {
      init.body = JSON.stringify(options.body);
      init.headers['Content-Type'] = 'application/json';
    }
    return fetch(ROOT + path, init).then(function (response) {
      var type = response.headers.get('Content-Type') || '';
      var parsed = type.indexOf('json') >= 0 ? response.json() : response.text();
      return parsed.then(function (body) {
        if (!response.ok) {
          var message = (body && body.error) || (typeof body === 'string' && body) ||
            (response.status + ' ' + response.statusText);
          var error = new Error(message);
          error.status = response.status;
          throw error;
        }
        return body;
      });
    });
  }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      var value = attrs[key];
      if (value === undefined || value === null || value === false) { return; }
      if (key === 'text') { node.textContent = value; }
      else if (key === 'onclick') { node.addEventListener('click', value); }
      else { node.setAttribute(key, value === true ? '' : value); }
    });
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) { return; }
      node.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
    });
    return node;
  }

  function replaceChildren(node, children) {
    while (node.firstChild) { node.removeChild(node.firstChild); }
    children.forEach(function (child) {
      node.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
    });
  }

  function seconds(job) {
    if (!job.started_at) { return null; }
    var end = job.finished_at ? Date.parse(job.finished_at) : Date.now();
    return Math.max(0, (end - Date.parse(job.started_at)) / 1000);
  }

  function duration(value) {
    if (value === null || value === undefined) { return ''; }
    if (value < 60) { return value.toFixed(1) + ' s'; }
    var minutes = Math.floor(value / 60);
    if (minutes < 60) { return minutes + ' min ' + Math.round(value % 60) + ' s'; }
    return Math.floor(minutes / 60) + ' h ' + (minutes % 60) + ' min';
  }

  function time(iso) {
    if (!iso) { return ''; }
    var date = new Date(iso);
    var today = new Date().toDateString() === date.toDateString();
    return today ? date.toLocaleTimeString() : date.toLocaleString();
  }

  function badge(text, kind) {
    return el('span', { 'class': 'badge ' + (kind || text), text: text });
  }

  // 'YYYYMMDD' (DICOM DA) as 'YYYY-MM-DD'; anything else as it is.
  function dicomDate(value) {
    return /^\d{8}$/.test(value || '') ? value.slice(0, 4) + '-' + value.slice(4, 6) + '-' + value.slice(6) : (value || '');
  }

  // Series summaries (/ai/series-summaries) by Orthanc id, fetched once per page: what a series
  // is does not change while the page is open.
  var summaries = {};
  function seriesSummaries(ids) {
    var missing = ids.filter(function (id, i) { return id && !(id in summaries) && ids.indexOf(id) === i; });
    if (!missing.length) { return Promise.resolve(summaries); }
    return api('/ai/series-summaries?ids=' + missing.slice(0, 200).join(',')).then(function (answer) {
      missing.slice(0, 200).forEach(function (id) { summaries[id] = null; });  // deleted: null
      answer.series.forEach(function (s) { summaries[s.series_id] = s; });
      return summaries;
    });
  }

  // "#3 Portal venous" / "CT · 40 images" / "2026-01-01 · CT abdomen": a series as people tell
  // them apart. Never a patient attribute (the summaries carry none).
  function seriesLines(s) {
    var title = (s.series_number ? '#' + s.series_number + ' ' : '') + (s.series_description || '(no series description)');
    var kind = [s.modality, s.images + (s.images === 1 ? ' image' : ' images')].filter(Boolean).join(' · ');
    var study = [dicomDate(s.study_date) || '(no study date)', s.study_description || '(no study description)'].join(' · ');
    return { title: title, kind: kind, study: study };
  }

  window.AinodeUi = {
    dicomDate: dicomDate,
    seriesSummaries: seriesSummaries,
    seriesLines: seriesLines,
    ROOT: ROOT,
    api: api,
    el: el,
    replaceChildren: replaceChildren,
    seconds: seconds,
    duration: duration,
    time: time,
    badge: badge,
    explorer: function (kind, id) { return ROOT + '/app/explorer.html#' + kind + '?uuid=' + id; },
    ohifStudy: function (studyUid) {
      return ROOT + '/ohif/viewer?StudyInstanceUIDs=' + encodeURIComponent(studyUid);
    }
  };
})();

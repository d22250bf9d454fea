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

  window.AinodeUi = {
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

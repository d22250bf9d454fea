/* The AI dashboard: polls the node's JSON routes and redraws; retry and cancel act on jobs. */
(function () {
  'use strict';
  var ui = window.AinodeUi;
  var el = ui.el;
  var FAST_MS = 3000;   // jobs, queue, health
  var SLOW_MS = 15000;  // models and rules change rarely
  var JOB_LIMIT = 100;
  var $ = function (id) { return document.getElementById(id); };
  var lastJobs = [];
  var followed = null;  // the job the last action was on: the message follows its state
  var summaries = {};  // Orthanc series id -> summary (null: deleted)
  var drawn = {};  // series ids whose summaries the table shows

  function showMessage(text, isError) {
    var box = $('message');
    box.textContent = text;
    box.className = 'message' + (isError ? ' error' : '');
    clearTimeout(showMessage.timer);
    showMessage.timer = setTimeout(function () { box.className = 'message hidden'; }, 8000);
  }

  function kv(target, pairs) {
    var children = [];
    pairs.forEach(function (pair) {
      children.push(el('dt', { text: pair[0] }));
      var value = pair[1];
      children.push(el('dd', {}, [typeof value === 'object' && value !== null ? value : String(value)]));
    });
    ui.replaceChildren(target, children);
  }

  // -- jobs -------------------------------------------------------------------------------

  function jobAction(job, action) {
    return ui.api('/ai/jobs/' + job.id + '/' + action, { method: 'POST' }).then(function (updated) {
      followed = { id: job.id, action: action };
      showMessage(followMessage(updated), updated.state === 'failed');
      return refreshFast();
    }).catch(function (error) {
      showMessage('Could not ' + action + ' job ' + job.id.slice(0, 8) + ': ' + error.message, true);
    });
  }

  function followMessage(job) {
    var name = 'Job ' + job.id.slice(0, 8) + ' (' + (job.pipeline || '') + '): ' + followed.action +
      ' requested; ';
    var error = job.error || job.dispatch_error || '';
    if (job.state === 'failed') { return name + 'it failed' + (error ? ': ' + error : '.'); }
    if (job.state === 'done') { return name + 'it is done.'; }
    return name + 'now ' + job.state + '.';
  }

  function follow() {
    if (!followed) { return; }
    var job = lastJobs.filter(function (j) { return j.id === followed.id; })[0];
    if (!job) { return; }
    showMessage(followMessage(job), job.state === 'failed');
    if (['done', 'failed', 'cancelled'].indexOf(job.state) >= 0) { followed = null; }
  }

  function seriesCell(job) {
    var s = summaries[job.series_id];
    var link = function (text) {
      return el('a', { href: ui.explorer('series', job.series_id), title: job.series_uid, text: text });
    };
    if (!s) {  // not fetched yet, or the series is gone from Orthanc
      return el('td', { 'class': 'series' }, [link(s === null ? '(deleted series)' : '…'),
        el('br'), el('span', { 'class': 'muted mono', text: '…' + job.series_uid.slice(-12) })]);
    }
    var lines = ui.seriesLines(s);
    return el('td', { 'class': 'series' }, [link(lines.title), ' ', el('span', { 'class': 'muted', text: lines.kind }),
      el('br'), el('span', { 'class': 'muted', text: lines.study })]);
  }

  function outputsCell(job) {
    var links = (job.outputs || []).map(function (id, i) {
      return el('a', { href: ui.explorer('instance', id), title: id, text: '#' + (i + 1) });
    });
    var kinds = job.detail && job.detail.results ? Object.keys(job.detail.results) :
      (job.state === 'done' ? job.outputs_requested : []);
    var children = [];
    if (kinds && kinds.length) { children.push(kinds.join(', ') + ' '); }
    links.forEach(function (link) { children.push(link, ' '); });
    return el('td', {}, children);
  }

  function jobRow(job) {
    var actions = [];
    if (job.state === 'failed' || job.state === 'cancelled') {
      actions.push(el('button', {
        'class': 'retry', 'data-job': job.id, text: 'Retry',
        onclick: function (event) { event.target.disabled = true; jobAction(job, 'retry'); }
      }));
    }
    if (job.state === 'queued' || job.state === 'running') {
      actions.push(el('button', {
        'class': 'cancel', 'data-job': job.id, text: 'Cancel',
        onclick: function (event) { event.target.disabled = true; jobAction(job, 'cancel'); }
      }));
    }
    var error = job.error || job.dispatch_error || '';
    return el('tr', { 'data-job': job.id, 'data-state': job.state }, [
      el('td', { title: job.created_at, text: ui.time(job.created_at) }),
      el('td', {}, [ui.badge(job.state)]),
      el('td', { text: job.pipeline || '—' }),
      el('td', { title: job.reason, text: job.decided_by }),
      seriesCell(job),
      el('td', { 'class': 'num', text: ui.duration(ui.seconds(job)) }),
      el('td', { 'class': 'num', text: String(job.attempts) }),
      outputsCell(job),
      el('td', { 'class': 'error', title: error, text: error.length > 200 ? error.slice(0, 200) + '…' : error }),
      el('td', {}, actions)
    ]);
  }

  function drawJobs() {
    var showIgnored = $('show-ignored').checked || $('state-filter').value === 'ignored';
    var jobs = lastJobs.filter(function (job) { return showIgnored || job.state !== 'ignored'; });
    var rows = jobs.map(jobRow);
    if (!rows.length) {
      rows = [el('tr', {}, [el('td', { colspan: '10', 'class': 'muted', text: 'No jobs yet.' })])];
    }
    ui.replaceChildren(document.querySelector('#jobs tbody'), rows);
  }

  function loadJobs() {
    var state = $('state-filter').value;
    var query = '?limit=' + JOB_LIMIT + (state ? '&state=' + encodeURIComponent(state) : '');
    return ui.api('/ai/jobs' + query).then(function (answer) {
      lastJobs = answer.jobs;
      drawJobs();
      follow();
      ui.seriesSummaries(lastJobs.map(function (job) { return job.series_id; })).then(function (all) {
        var fresh = lastJobs.some(function (job) { return !(job.series_id in drawn); });
        summaries = all;
        if (fresh) {
          lastJobs.forEach(function (job) { drawn[job.series_id] = true; });
          drawJobs();
        }
      }).catch(function () { /* the table keeps showing UIDs; the next poll tries again */ });
      var counts = answer.counts || {};
      kv($('counts'), Object.keys(counts).map(function (s) { return [s, counts[s]]; }));
    });
  }

  // -- queue and workers ------------------------------------------------------------------

  function loadQueues() {
    return ui.api('/ai/queues').then(function (answer) {
      $('queued').textContent = answer.jobs.queued;
      $('running').textContent = answer.jobs.running;
      var broker = answer.broker;
      if (!broker.up) {
        kv($('broker-queues'), [['broker', ui.badge('down')]]);
        return;
      }
      var names = Object.keys(broker.queues).filter(function (name) { return broker.queues[name] > 0; });
      var pairs = names.map(function (name) { return [name, broker.queues[name]]; });
      if (!pairs.length) { pairs = [['broker queues', 'empty']]; }
      kv($('broker-queues'), pairs);
    });
  }

  function loadHealth() {
    return ui.api('/ai/health').then(function (health) {
      var workers = (health.worker && health.worker.workers) || [];
      $('worker-count').textContent = workers.length;
      var pairs = [];
      ['orthanc', 'broker', 'worker'].forEach(function (part) {
        var p = health[part] || {};
        pairs.push([part, el('span', { title: p.detail || '' }, [ui.badge(p.healthy ? 'ok' : 'down')])]);
      });
      workers.forEach(function (name) { pairs.push(['', el('span', { 'class': 'mono', text: name })]); });
      pairs.push(['version', health.version]);
      kv($('health'), pairs);
    });
  }

  // -- models and rules -------------------------------------------------------------------

  function loadModels() {
    return ui.api('/ai/models').then(function (answer) {
      var rows = answer.models.map(function (model) {
        var a = model.availability || {};
        return el('tr', { 'data-model': model.id }, [
          el('td', { title: model.description || '' }, [el('strong', { text: model.id }), el('br'),
            el('span', { 'class': 'muted', text: model.name || '' })]),
          el('td', { text: model.kind }),
          el('td', { text: model.version || '' }),
          el('td', { title: a.reason || '' }, [ui.badge(a.available ? 'yes' : 'no', a.available ? 'ok' : 'down'),
            ' ', el('span', { 'class': 'muted reason', text: a.available ? '' : (a.reason || '') })])
        ]);
      });
      ui.replaceChildren(document.querySelector('#models tbody'), rows);
    });
  }

  function loadRules() {
    return ui.api('/ai/rules').then(function (status) {
      var text = status.loaded ? status.rule_count + ' rules, ' + status.mode + ' (' + status.path + ')'
        : 'No rules loaded';
      var children = [text];
      if (status.error) {
        children = [el('div', { 'class': 'message error', text: status.error.message })].concat(children);
      }
      ui.replaceChildren($('rules-status'), children.map(function (c) {
        return typeof c === 'string' ? el('div', { text: c }) : c;
      }));
      var rows = status.rules.map(function (rule) {
        return el('tr', { 'data-rule': rule.name, 'class': rule.enabled ? '' : 'muted' }, [
          el('td', {}, [el('strong', { text: rule.name }), rule.enabled ? null : ' (disabled)', el('br'),
            el('span', { 'class': 'muted', text: rule.action + ' on ' + rule.trigger })]),
          el('td', { 'class': 'mono', text: rule.when }),
          el('td', { text: rule.pipeline || '—' }),
          el('td', { 'class': 'num', text: String(rule.matches) })
        ]);
      });
      ui.replaceChildren(document.querySelector('#rules tbody'), rows);
    });
  }

  // -- polling ----------------------------------------------------------------------------

  function settle(promises) {
    return Promise.all(promises.map(function (p) {
      return p.then(function () { return null; }, function (error) { return error; });
    })).then(function (errors) {
      var failed = errors.filter(Boolean);
      $('stamp').textContent = (failed.length ? 'update failed: ' + failed[0].message + ' · ' : '') +
        'updated ' + new Date().toLocaleTimeString();
    });
  }

  function refreshFast() { return settle([loadJobs(), loadQueues(), loadHealth()]); }
  function refreshSlow() { return settle([loadModels(), loadRules()]); }

  $('state-filter').addEventListener('change', loadJobs);
  $('show-ignored').addEventListener('change', drawJobs);
  refreshFast();
  refreshSlow();
  setInterval(function () { if (!document.hidden) { refreshFast(); } }, FAST_MS);
  setInterval(function () { if (!document.hidden) { refreshSlow(); } }, SLOW_MS);
})();

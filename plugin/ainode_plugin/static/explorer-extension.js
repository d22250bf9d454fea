/* AI node extension of Orthanc Explorer (loaded through orthanc.ExtendOrthancExplorer).
 * Home page: links to the AI dashboard and OHIF. Study page: open it in OHIF. Series page: what
 * the series is (study date and description, series number and description, modality, images),
 * its AI jobs with their state and outputs, "Run AI" with a pipeline that could take the series
 * (the reason where none can), a message that follows the job it started, links to OHIF, the
 * dashboard and the interactive page. Orthanc Explorer is jQuery Mobile 1.x. */
(function ($) {
  'use strict';
  var POLL_MS = 3000;
  var seriesTimer = null;
  var startedJob = null;  // the job "Run AI" made or found: its message follows its state

  function text(tag, value, attrs) { return $('<' + tag + '>').attr(attrs || {}).text(value); }

  function ohifStudyUrl(studyUid) {
    return '../ohif/viewer?StudyInstanceUIDs=' + encodeURIComponent(studyUid);
  }

  function linkItem(id, label, href, icon) {
    return $('<li>').attr({ 'data-icon': icon || 'arrow-r' })
      .append($('<a>').attr({ id: id, href: href, target: '_blank', rel: 'noopener', 'data-ajax': 'false' }).text(label));
  }

  // -- home (lookup) page -----------------------------------------------------------------

  $('#lookup').live('pagebeforecreate', function () {
    var list = $('<ul>').attr({ 'data-role': 'listview', 'data-inset': 'true', id: 'ainode-home' })
      .append(text('li', 'AI node', { 'data-role': 'list-divider' }))
      .append(linkItem('ainode-dashboard-link', 'AI dashboard: jobs, queue, models, rules', '../ai/ui/', 'grid'))
      .append(linkItem('ainode-ohif-link', 'OHIF viewer', '../ohif/', 'search'));
    $('#lookup-form').before(list);
  });

  // -- study page -------------------------------------------------------------------------

  $('#study').live('pagebeforecreate', function () {
    var list = $('<ul>').attr({ 'data-role': 'listview', 'data-inset': 'true', 'data-theme': 'd',
      'data-divider-theme': 'c', id: 'ainode-study' })
      .append(text('li', 'AI node', { 'data-role': 'list-divider' }))
      .append(linkItem('ainode-study-ohif', 'Open in OHIF', '#', 'search'));
    $('#study-access').after(list);
  });

  $('#study').live('pagebeforeshow', function () {
    if (!$.mobile.pageData) { return; }
    $.getJSON('../studies/' + $.mobile.pageData.uuid, function (study) {
      $('#ainode-study-ohif').attr('href', ohifStudyUrl(study.MainDicomTags.StudyInstanceUID));
    });
  });

  // -- series page ------------------------------------------------------------------------

  $('#series').live('pagebeforecreate', function () {
    var box = $('<ul>').attr({ 'data-role': 'listview', 'data-inset': 'true', 'data-theme': 'd',
      'data-divider-theme': 'c', id: 'ainode-series' })
      .append(text('li', 'AI node', { 'data-role': 'list-divider' }))
      .append($('<li>').attr('id', 'ainode-series-summary').css({ 'white-space': 'normal', 'font-size': '13px' }))
      .append($('<li>').attr('id', 'ainode-run-item').append(
        $('<div>').attr({ 'class': 'ainode-run' }).append(
          $('<label>').attr('for', 'ainode-pipeline').text('Run AI with'),
          $('<select>').attr({ id: 'ainode-pipeline', 'data-mini': 'true' }),
          $('<a>').attr({ id: 'ainode-run', href: '#', 'data-role': 'button', 'data-mini': 'true',
            'data-icon': 'gear', 'data-theme': 'b' }).text('Run AI'),
          $('<div>').attr({ id: 'ainode-run-message' }).css({ 'font-size': '12px', 'white-space': 'normal' }))))
      .append($('<li>').attr('id', 'ainode-no-run').css({ 'white-space': 'normal', 'font-size': '13px' }).hide())
      .append(linkItem('ainode-series-ohif', 'Open study in OHIF', '#', 'search'))
      .append(linkItem('ainode-series-dashboard', 'AI dashboard', '../ai/ui/', 'grid'))
      .append(linkItem('ainode-series-interactive', 'Interactive segmentation', '#', 'edit'))
      .append(text('li', 'AI jobs of this series', { 'data-role': 'list-divider' }))
      .append($('<li>').attr('id', 'ainode-jobs-item').css('white-space', 'normal')
        .append($('<div>').attr('id', 'ainode-jobs').text('Loading…')));
    $('#series-delete').closest('ul').before(box);
  });

  $('#ainode-run').live('click', function (event) {
    event.preventDefault();
    runPipeline();
  });

  function seriesId() { return $.mobile.pageData ? $.mobile.pageData.uuid : null; }

  function jobsTable(jobs) {
    if (!jobs.length) { return text('div', 'No AI job for this series yet.'); }
    var table = $('<table>').attr('id', 'ainode-jobs-table').css({ width: '100%', 'font-size': '12px', 'border-collapse': 'collapse' });
    table.append($('<tr>').append(text('th', 'State'), text('th', 'Pipeline'), text('th', 'Decided by'),
      text('th', 'Outputs'), text('th', 'Created')));
    $.each(jobs, function (i, job) {
      var outputs = $('<td>');
      $.each(job.outputs || [], function (j, id) {
        outputs.append($('<a>').attr('href', '#instance?uuid=' + id).text('#' + (j + 1)), ' ');
      });
      var row = $('<tr>').attr({ 'data-job': job.id, 'data-state': job.state }).append(
        $('<td>').append(text('strong', job.state)),
        text('td', job.pipeline || '—'),
        text('td', job.decided_by).attr('title', job.reason),
        outputs,
        text('td', new Date(job.created_at).toLocaleString()));
      table.append(row);
      if (job.error) {
        table.append($('<tr>').append(text('td', job.error, { colspan: 5 }).css('color', '#b3261e')));
      }
    });
    table.find('th, td').css({ 'text-align': 'left', padding: '2px 4px', 'border-bottom': '1px solid #ddd' });
    return table;
  }

  function loadJobs() {
    var id = seriesId();
    if (!id) { return; }
    $.getJSON('../ai/series/' + id + '/jobs')
      .done(function (answer) {
        $('#ainode-jobs').empty().append(jobsTable(answer.jobs));
        followStartedJob(answer.jobs);
      })
      .fail(function (xhr) { $('#ainode-jobs').text('AI jobs unavailable (' + xhr.status + ')'); });
  }

  // The message under "Run AI" says what became of the job: queued, running, done or failed.
  function followStartedJob(jobs) {
    if (!startedJob) { return; }
    var job = $.grep(jobs, function (j) { return j.id === startedJob; })[0];
    if (!job) { return; }
    var words = {
      queued: 'Job queued; waiting for a worker.',
      running: 'Job running…',
      done: 'Job done: ' + (job.outputs || []).length + ' result(s) stored (see the table below).',
      failed: 'Job failed: ' + (job.error || job.dispatch_error || 'no reason given'),
      cancelled: 'Job cancelled.'
    };
    $('#ainode-run-message').text(words[job.state] || ('Job ' + job.state + '.'))
      .css('color', job.state === 'failed' ? '#b3261e' : '');
  }

  function dicomDate(value) {
    return /^\d{8}$/.test(value || '') ? value.slice(0, 4) + '-' + value.slice(4, 6) + '-' + value.slice(6) : (value || '');
  }

  function showSummary(s) {
    var title = (s.series_number ? '#' + s.series_number + ' ' : '') + (s.series_description || '(no series description)');
    $('#ainode-series-summary').empty().append(
      text('strong', title),
      text('span', ' · ' + s.modality + ' · ' + s.images + (s.images === 1 ? ' image' : ' images')),
      $('<br>'),
      text('span', (dicomDate(s.study_date) || '(no study date)') + ' · ' +
        (s.study_description || '(no study description)')).css('color', '#555'));
  }

  // "Run AI" only with a pipeline that could take this series; otherwise the reason instead.
  function loadPipelines() {
    var id = seriesId();
    if (!id) { return; }
    $.getJSON('../ai/series/' + id + '/summary').done(function (answer) {
      showSummary(answer.series);
      var select = $('#ainode-pipeline').empty();
      var runnable = $.grep(answer.pipelines, function (p) { return p.runnable; });
      $.each(answer.pipelines, function (i, p) {
        select.append($('<option>').attr({ value: p.pipeline, disabled: !p.runnable, title: p.reason })
          .text(p.name + (p.runnable ? '' : ' (' + p.reason + ')')));
      });
      if (runnable.length) { select.val(runnable[0].pipeline); }
      select.selectmenu('refresh', true);
      $('#ainode-run-item').toggle(runnable.length > 0);
      var reasons = {};
      $.each(answer.pipelines, function (i, p) { reasons[p.reason] = true; });
      var why = Object.keys(reasons).length === 1 ? answer.pipelines[0].reason : 'no pipeline here can take it';
      $('#ainode-no-run').toggle(!runnable.length)
        .text(answer.pipelines.length ? 'Run AI is not offered for this series: ' + why + '.' :
          'Run AI is not offered: the node has no pipeline.');
    }).fail(function (xhr) {
      $('#ainode-run-item').hide();
      $('#ainode-no-run').show().text('AI node unavailable (' + xhr.status + ')');
    });
  }

  function runPipeline() {
    var id = seriesId();
    var pipeline = $('#ainode-pipeline').val();
    if (!id || !pipeline) { return; }
    $('#ainode-run-message').text('Sending…').css('color', '');
    $.ajax({ url: '../ai/series/' + id + '/run', type: 'POST', contentType: 'application/json',
      data: JSON.stringify({ pipeline: pipeline }), dataType: 'json' })
      .done(function (job) {
        startedJob = job.id;
        $('#ainode-run-message').text(job.created ? 'Job queued; waiting for a worker.' :
          'This series already has this job (' + job.state + ').');
        loadJobs();
      })
      .fail(function (xhr) {
        var message = (xhr.responseJSON && xhr.responseJSON.error) || xhr.statusText;
        try { message = JSON.parse(xhr.responseText).error || message; } catch (e) { /* not JSON */ }
        $('#ainode-run-message').text('Run AI failed: ' + message).css('color', '#b3261e');
      });
  }

  $('#series').live('pagebeforeshow', function () {
    var id = seriesId();
    if (!id) { return; }
    $('#ainode-run-message').text('');
    startedJob = null;
    $('#ainode-series-summary').text('Loading…');
    $('#ainode-jobs').text('Loading…');
    $('#ainode-series-interactive').attr('href', '../ai/ui/interactive.html?series=' + id);
    $.getJSON('../series/' + id, function (series) {
      $.getJSON('../studies/' + series.ParentStudy, function (study) {
        $('#ainode-series-ohif').attr('href', ohifStudyUrl(study.MainDicomTags.StudyInstanceUID));
      });
    });
    loadPipelines();
    loadJobs();
    clearInterval(seriesTimer);
    seriesTimer = setInterval(loadJobs, POLL_MS);
  });

  $('#series').live('pagehide', function () { clearInterval(seriesTimer); seriesTimer = null; });
})(jQuery);

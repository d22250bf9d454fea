/* AI node extension of Orthanc Explorer (loaded through orthanc.ExtendOrthancExplorer).
 * Home page: links to the AI dashboard and OHIF. Study page: open it in OHIF. Series page: the
 * series' AI jobs with their state and outputs, "Run AI" with a pipeline from /ai/models, links
 * to OHIF and to the interactive segmentation page. Orthanc Explorer is jQuery Mobile 1.x. */
(function ($) {
  'use strict';
  var POLL_MS = 3000;
  var seriesTimer = null;

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
      .append($('<li>').attr('id', 'ainode-run-item').append(
        $('<div>').attr({ 'class': 'ainode-run' }).append(
          $('<label>').attr('for', 'ainode-pipeline').text('Run AI with'),
          $('<select>').attr({ id: 'ainode-pipeline', 'data-mini': 'true' }),
          $('<a>').attr({ id: 'ainode-run', href: '#', 'data-role': 'button', 'data-mini': 'true',
            'data-icon': 'gear', 'data-theme': 'b' }).text('Run AI'),
          $('<div>').attr({ id: 'ainode-run-message' }).css({ 'font-size': '12px', 'white-space': 'normal' }))))
      .append(linkItem('ainode-series-ohif', 'Open study in OHIF', '#', 'search'))
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
      .done(function (answer) { $('#ainode-jobs').empty().append(jobsTable(answer.jobs)); })
      .fail(function (xhr) { $('#ainode-jobs').text('AI jobs unavailable (' + xhr.status + ')'); });
  }

  function loadPipelines() {
    $.getJSON('../ai/models').done(function (answer) {
      var select = $('#ainode-pipeline').empty();
      $.each(answer.models, function (i, model) {
        var available = !model.availability || model.availability.available;
        select.append($('<option>').attr({ value: model.id, disabled: !available })
          .text(model.name + (available ? '' : ' (unavailable)')));
      });
      select.selectmenu('refresh', true);
    });
  }

  function runPipeline() {
    var id = seriesId();
    var pipeline = $('#ainode-pipeline').val();
    if (!id || !pipeline) { return; }
    $('#ainode-run-message').text('Sending…');
    $.ajax({ url: '../ai/series/' + id + '/run', type: 'POST', contentType: 'application/json',
      data: JSON.stringify({ pipeline: pipeline }), dataType: 'json' })
      .done(function (job) {
        $('#ainode-run-message').text(job.created ? 'Job queued.' : 'This series already has this job (' + job.state + ').');
        loadJobs();
      })
      .fail(function (xhr) {
        var message = (xhr.responseJSON && xhr.responseJSON.error) || xhr.statusText;
        try { message = JSON.parse(xhr.responseText).error || message; } catch (e) { /* not JSON */ }
        $('#ainode-run-message').text('Run AI failed: ' + message);
      });
  }

  $('#series').live('pagebeforeshow', function () {
    var id = seriesId();
    if (!id) { return; }
    $('#ainode-run-message').text('');
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

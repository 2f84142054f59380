// The subscribe page's helpers: the browser's time zone, the weekly-day field, topic chips.
// A file, not an inline script: the Content-Security-Policy allows scripts from this site only.
// Progressive enhancement only: the form works the same without it.
(function () {
  var tz = document.getElementById("timezone");
  try {
    var browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (browserZone && !tz.dataset.userSet) {
      for (var i = 0; i < tz.options.length; i++) {
        if (tz.options[i].value === browserZone) { tz.selectedIndex = i; break; }
      }
    }
  } catch (e) { /* keep the server default */ }
  var freq = document.getElementById("frequency");
  var day = document.getElementById("weekly-day-field");
  function showDay() { day.hidden = freq.value !== "weekly"; }
  freq.addEventListener("change", showDay); showDay();
  var topics = document.getElementById("topics");
  function chosen() {
    return topics.value.split(/[,;\n]/).map(function (t) { return t.trim().toLowerCase(); });
  }
  document.querySelectorAll(".chip").forEach(function (chip) {
    chip.setAttribute("role", "button"); chip.tabIndex = 0; chip.classList.add("clickable");
    function add() {
      var topic = chip.dataset.topic;
      if (chosen().indexOf(topic.toLowerCase()) === -1) {
        topics.value = topics.value.replace(/\s+$/, "") + (topics.value.trim() ? "\n" : "") + topic;
      }
      chip.classList.add("added");
    }
    if (chosen().indexOf(chip.dataset.topic.toLowerCase()) !== -1) { chip.classList.add("added"); }
    chip.addEventListener("click", add);
    chip.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); add(); } });
  });
})();

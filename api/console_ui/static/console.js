// Copy buttons: <button data-copy="input-id">; reload of a page with a run in
// progress (an element with data-reload="SECONDS"). The only script of the console.
document.addEventListener("click", function (event) {
  var button = event.target.closest("button[data-copy]");
  if (!button) return;
  var input = document.getElementById(button.getAttribute("data-copy"));
  input.select();
  var done = function () { button.textContent = "Copied"; };
  if (navigator.clipboard) {
    navigator.clipboard.writeText(input.value).then(done, function () {
      document.execCommand("copy"); done();
    });
  } else {
    document.execCommand("copy"); done();
  }
});

// Reload while a run is in progress, unless the operator started typing.
(function () {
  var marker = document.querySelector("[data-reload]");
  if (!marker) return;
  var typed = false;
  document.addEventListener("input", function () { typed = true; });
  var seconds = parseInt(marker.getAttribute("data-reload"), 10) || 3;
  setTimeout(function () { if (!typed) window.location.reload(); }, seconds * 1000);
})();

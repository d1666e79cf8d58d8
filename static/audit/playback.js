// Playback of a terminal session (templates/audit/playback.html) with asciinema-player, served from the
// project's static files. The recording is fetched once: every fetch of it is an audited view, and a
// change of speed re-creates the player (it has no speed setter) from the same text, where it was.
(() => {
  "use strict";
  const root = document.getElementById("player");
  if (!root || !window.AsciinemaPlayer) return;
  const status = document.querySelector(".player-status");
  const speedSelect = document.getElementById("player-speed");
  const markers = JSON.parse(root.dataset.markers || "[]");
  let recording = null;
  let player = null;
  let playing = false;

  function say(text) {
    if (status) status.textContent = text;
  }

  function load() {
    if (!recording) {
      recording = fetch(root.dataset.src, { credentials: "same-origin" }).then((response) => {
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        return response.text();
      });
    }
    return recording;
  }

  function create(startAt, speed, autoPlay) {
    if (player) player.dispose();
    playing = autoPlay;
    player = window.AsciinemaPlayer.create({ data: load, parser: "asciicast" }, root, {
      startAt, speed, autoPlay, preload: true, fit: "width", controls: true, markers, terminalFontSize: "small",
    });
    player.addEventListener("play", () => { playing = true; say(""); });
    player.addEventListener("pause", () => { playing = false; });
    player.addEventListener("ended", () => { playing = false; say("End of the recording."); });
    window.clusterraPlayer = player; // for the browser tests, like window.clusterraTerminal
  }

  function currentSpeed() {
    return parseFloat(speedSelect ? speedSelect.value : root.dataset.speed) || 1;
  }

  load().then(() => say(""), (error) => say(`The recording could not be loaded (${error.message}).`));
  create(parseFloat(root.dataset.start) || 0, currentSpeed(), root.dataset.autoplay === "true");

  if (speedSelect) {
    speedSelect.addEventListener("change", () => {
      create(player.getCurrentTime(), currentSpeed(), playing);
      const url = new URL(window.location.href);
      url.searchParams.set("speed", speedSelect.value);
      window.history.replaceState(null, "", url);
    });
  }

  // An event's time in the list beside the player: jump there instead of reloading the page.
  document.querySelectorAll("a[data-seek]").forEach((link) => {
    link.addEventListener("click", (event) => {
      event.preventDefault();
      player.seek(parseFloat(link.dataset.seek)).then(() => player.play());
    });
  });
})();

"use strict";
// Follows a running move on the device page: asks for its phase every second and
// reloads the page once the move is final, so the placement shows the new shard.
document.addEventListener("DOMContentLoaded", function () {
  const panel = document.getElementById("move-progress");
  if (!panel || panel.dataset.final === "true") {
    return;
  }
  const label = panel.querySelector(".phase");

  async function poll() {
    try {
      const answer = await fetch(panel.dataset.url, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
      if (answer.ok) {
        const job = await answer.json();
        panel.dataset.phase = job.phase;
        label.textContent = job.phase;
        if (job.final) {
          window.location.reload();
          return;
        }
      }
    } catch (error) {
      // A node restarting or a network blip: the next poll tries again.
    }
    window.setTimeout(poll, 1000);
  }

  window.setTimeout(poll, 1000);
});

// The job composer (templates/jobs/submit.html, jobs/composer.py).
// - Picking a partition puts its starter script in the editor, if the editor is empty or still holds an
//   untouched starter (never over the user's own text).
// - "Script on the cluster" / "Write a script": CSS shows one of the two; here the other is disabled, so
//   the browser neither checks nor sends it.
// - Too long is said while typing: the fields have no maxlength, which would silently cut what is typed or
//   pasted. The server checks everything again and stays the authority.
(() => {
  const form = document.querySelector("form.composer");
  if (!form) return;
  const starters = JSON.parse(document.getElementById("starter-scripts").textContent);
  const editor = form.elements.script;
  const scriptPath = form.elements.script_path;
  const partition = form.elements.partition;

  const isStarter = (text) => Object.values(starters).some((starter) => starter.trim() === text.trim());
  if (partition) {
    partition.addEventListener("change", () => {
      if (editor.value.trim() === "" || isStarter(editor.value)) {
        editor.value = starters[partition.value] ?? starters[""];
        editor.dispatchEvent(new Event("input"));
      }
    });
  }

  const inlineChoice = form.querySelector("input[name=mode][value=inline]");
  const syncMode = () => {
    const inline = inlineChoice.checked;
    scriptPath.disabled = inline;
    scriptPath.required = !inline;
    editor.disabled = !inline;
    editor.required = inline;
  };
  form.querySelectorAll("input[name=mode]").forEach((radio) => radio.addEventListener("change", syncMode));
  syncMode();

  // A message under the field, and the same as the field's validity (the browser shows it on submit).
  const say = (input, message) => {
    input.setCustomValidity(message);
    let note = input.parentElement.querySelector(".field-live-error");
    if (!note) {
      note = document.createElement("p");
      note.className = "field-live-error";
      note.setAttribute("role", "alert");
      input.insertAdjacentElement("afterend", note);
    }
    note.textContent = message;
    note.hidden = !message;
  };
  const label = (input) => (input.labels && input.labels[0] ? input.labels[0].textContent.replace(/:$/, "") : "This field");

  form.querySelectorAll("[data-max-chars]").forEach((input) => {
    const most = Number(input.dataset.maxChars);
    const check = () => {
      const length = [...input.value].length; // characters, as the server counts them
      say(input, length > most ? `${label(input)} is ${length} characters long; at most ${most}.` : "");
    };
    input.addEventListener("input", check);
    check();
  });

  const size = document.getElementById("script-size");
  const maxBytes = Number(editor.dataset.maxBytes);
  const kib = (bytes) => `${(bytes / 1024).toFixed(bytes < 10240 ? 1 : 0)} KiB`;
  const checkSize = () => {
    const bytes = new TextEncoder().encode(editor.value).length;
    size.textContent = `${kib(bytes)} of at most ${kib(maxBytes)}`;
    say(editor, bytes > maxBytes
      ? `The script is ${bytes} bytes; written scripts are limited to ${kib(maxBytes)}: save it on the cluster and give its path.`
      : "");
  };
  editor.addEventListener("input", checkSize);
  checkSize();

  // Enter in the template name saves the template (not the form's first button, "Submit job").
  const templateName = form.elements.template_name;
  templateName.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      document.getElementById("save-template").click();
    }
  });
})();

// Forms with data-confirm="question" ask before they submit. A listener on the document rather than
// inline onsubmit handlers: the Content-Security-Policy allows no inline script, and it also covers
// forms that htmx swaps in later.
document.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-confirm]");
  if (form && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});

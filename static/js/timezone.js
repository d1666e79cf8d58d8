// Times on pages are rendered in the viewer's time zone (clusterra/timezones.py). The server learns the
// browser's zone from this cookie; on the first visit (or after travelling) the page was rendered for
// another zone, so a GET page is shown once more, now in the right one. A zone chosen in the
// preferences wins over the browser's and needs no reload.
(() => {
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  if (!zone || !/^[A-Za-z0-9_+\-\/]+$/.test(zone)) return;  // IANA names need no encoding in a cookie
  const stored = () => (document.cookie.match(/(?:^|; )clusterra_tz=([^;]*)/) || [])[1];
  if (stored() === zone) return;
  const secure = location.protocol === "https:" ? "; Secure" : "";
  document.cookie = `clusterra_tz=${zone}; path=/; max-age=31536000; SameSite=Lax${secure}`;
  const root = document.documentElement.dataset;
  if (root.tzChosen === "1" || root.method !== "GET" || root.tz === zone) return;
  // Reload at most once per tab and zone, only if the cookie was kept (cookies blocked: it never would be),
  // and not over a page that shows a message (it would be lost).
  let tried = null;
  try { tried = sessionStorage.getItem("clusterra_tz_reload"); } catch (e) { return; }
  if (tried === zone || stored() !== zone || document.querySelector(".messages")) return;
  try { sessionStorage.setItem("clusterra_tz_reload", zone); } catch (e) { return; }
  location.reload();
})();

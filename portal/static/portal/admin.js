// The admin's list of every model folds away, until opened, on screens under 1600 px: the lists
// and forms need the width. Django's nav_sidebar.js (deferred) reads this choice; the toggle keeps it.
"use strict";
try {
  const key = "django.admin.navSidebarIsOpen";
  if (localStorage.getItem(key) === null && window.innerWidth < 1600) localStorage.setItem(key, "false");
} catch (error) {
  // No storage (a private window): the sidebar stays open, as Django has it.
}

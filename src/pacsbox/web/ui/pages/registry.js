// The page registry. A later feature adds a page with one module in pages/ exporting
// `render(ctx)` and ONE line here:
//   route:     the hash path (#/<route>?params)
//   module:    the file in pages/
//   title:     i18n key of its name (navigation, document title)
//   privilege: needed to see it (null: any logged-in user); nav: shown in the main menu
//   public:    reachable without a login
export const pages = [
  {route: 'login', module: './login.js', title: 'login.title', public: true},
  {route: 'password', module: './password.js', title: 'password.title', privilege: null},
  {route: 'list', module: './list.js', title: 'nav.list', privilege: 'view', nav: 'main'},
  {route: 'patient', module: './patient.js', title: 'patient.title', privilege: 'view'},
  {route: 'study', module: './study.js', title: 'study.title', privilege: 'view'},
  {route: 'series', module: './series.js', title: 'series.title', privilege: 'view'},
  {route: 'instance', module: './instance.js', title: 'instance.title', privilege: 'view'},
  {route: 'viewer', module: './viewer.js', title: 'viewer.title', privilege: 'view'},
  {route: 'upload', module: './upload.js', title: 'nav.upload', privilege: 'upload', nav: 'main'},
  {route: 'shares', module: './shares.js', title: 'nav.shares', privilege: 'share', nav: 'main'},
  {route: 'dashboard', module: './dashboard.js', title: 'nav.dashboard', privilege: 'view', nav: 'main'},
  {route: 'aes', module: './aes.js', title: 'nav.aes', privilege: 'view', nav: 'admin'},
  {route: 'users', module: './users.js', title: 'nav.users', privilege: 'admin', nav: 'admin'},
  {route: 'settings', module: './settings.js', title: 'nav.settings', privilege: 'admin', nav: 'admin'},
  {route: 'audit', module: './audit.js', title: 'nav.audit', privilege: 'admin', nav: 'admin'},
];

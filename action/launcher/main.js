// The writ action's main step: run `writ-action main` (see launcher.js).
'use strict';
require('./launcher.js').run('main');

// The writ action's post step: run `writ-action post`, which revokes the token (see launcher.js).
'use strict';
require('./launcher.js').run('post');

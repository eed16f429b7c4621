/*
 * rampart-spam main: hand the stage's parameters to the server skeleton.
 */
#include "mail/stage.h"

extern const struct stage_def spam_stage;

int main(int argc, char **argv)
{
	return stage_main(&spam_stage, argc, argv);
}
